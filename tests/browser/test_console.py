"""The console in a real browser (Debian's chromium, headless, driven by Playwright) against the
app on a real socket, a real Redis and the User.com sandbox. One screenshot per page goes to
/tmp/console-*.png."""

from __future__ import annotations

import re
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from marshmallow import ValidationError
from playwright.sync_api import Browser, Page, expect, sync_playwright
from redis import Redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from service import create_app
from service.config import Settings
from service.core.update import UserUpdate
from service.devtools.embedded_redis import RedisProcess
from service.devtools.wsgi_server import BackgroundServer
from service.intake import invalid_item
from service.sources.base import Described
from service.store import keys
from workers.delivery.context import configure
from workers.runner import build_context

TOKEN = "console-token"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
WAIT_MS = 30_000  # generous: the machine may be loaded
expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    yield page
    context.close()


def update(event_id: str, user_id: str, **standard: Any) -> UserUpdate:
    return UserUpdate(
        source="stripe",
        event_id=event_id,
        event_type="customer.subscription.updated",
        event_time=1_700_000_000,
        user_id=user_id,
        customer_id=None,
        standard={"email": f"{user_id}@example.com", **standard},
        custom={"plan": "pro"},
        tags=["subscriber"],
    )


@pytest.fixture
def relay(env: dict[str, str], redis: Redis) -> Iterator[tuple[str, Settings]]:
    settings = Settings.from_env({**env, "RELAY_ADMIN_TOKEN": TOKEN})
    ctx = build_context(settings, "usercom")
    configure(ctx)
    for item in (update("evt_ok", "u1"), update("evt_bad", "u2", company_id="co_missing")):
        assert ctx.store.accept(item)
    for event_id, user in (("evt_bad2", "u3"), ("evt_bad3", "u4")):
        assert ctx.store.accept(update(event_id, user, company_id="co_missing"))
    SimpleWorker([ctx.queues[keys.LIVE]], connection=ctx.redis, serializer=JSONSerializer).work(burst=True)
    assert ctx.store.ledger()["dead_lettered"] == 3
    server = BackgroundServer(create_app(settings)).start()
    yield server.base_url, settings
    server.stop()
    ctx.redis.close()


def sign_in(page: Page, base_url: str) -> None:
    page.goto(f"{base_url}/console")
    page.fill("#token", TOKEN)
    page.click("#login")
    expect(page.locator("#nav")).to_be_visible()


def test_console_pages(page: Page, relay: tuple[str, Settings], redis: Redis) -> None:
    base_url, _ = relay
    page.goto(f"{base_url}/console")
    page.fill("#token", "wrong")
    page.click("#login")
    expect(page.locator("#login-error")).to_contain_text("refused")
    sign_in(page, base_url)

    # Overview: the numbers are /status's.
    status = page.request.get(f"{base_url}/status").json()["destinations"]["usercom"]
    card = page.locator('section.destination[data-name="usercom"]')
    expect(card.locator('[data-field="delivered"]')).to_have_text(str(status["ledger"]["delivered"]))
    expect(card.locator('[data-field="received"]')).to_have_text(str(status["ledger"]["received"]))
    expect(card.locator('[data-field="dlq-size"]')).to_have_text(str(status["dlq"]["size"]))
    expect(card.locator('[data-field="reason-usercom_rejected"]')).to_have_text("3")
    expect(card.locator("svg.chart")).to_be_visible()
    # Times arrive as ISO 8601 (UTC) and are shown to the second.
    assert status["last_delivery_at"].endswith("Z")
    expect(card.locator('[data-field="last-delivery"]')).to_have_text(status["last_delivery_at"][:19] + "Z")
    expect(page.locator("#refreshed")).to_have_text(re.compile(r"^Refreshed \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ,"))
    page.screenshot(path="/tmp/console-overview.png", full_page=True)

    # Dead letters: filter, open one, replay it (confirmed), see it leave the list.
    page.click('a[href="#/dlq"]')
    expect(page.locator("#dlq-table tbody tr")).to_have_count(3)
    page.fill("#f-user", "u2")
    page.click("#f-apply")
    expect(page.locator("#dlq-table tbody tr")).to_have_count(1)
    page.screenshot(path="/tmp/console-dlq.png", full_page=True)
    page.click('tr[data-id="stripe-evt_bad"] a')
    expect(page.locator("#item-json")).to_contain_text('"reason": "usercom_rejected"')
    page.screenshot(path="/tmp/console-item.png", full_page=True)
    page.click("#replay")
    expect(page.locator("#confirm")).to_be_visible()
    page.click("#confirm-yes")
    expect(page.locator("#flash")).to_contain_text("Replay: stripe-evt_bad")
    expect(page.locator('tr[data-id="stripe-evt_bad"]')).to_have_count(0)
    assert redis.llen(keys.USERCOM.rq_queue_key(keys.REPLAY)) == 1

    # Bulk replay: the dry run's count first; cancel changes nothing, yes replays them.
    page.fill("#f-user", "")
    page.click("#f-apply")
    expect(page.locator("#dlq-table tbody tr")).to_have_count(2)
    page.click("#bulk-replay")
    expect(page.locator("#confirm-text")).to_have_text("Replay ALL dead letters at usercom (no filter): 2 item(s)?")
    page.screenshot(path="/tmp/console-bulk.png", full_page=True)
    page.click("#confirm-no")
    expect(page.locator("#dlq-table tbody tr")).to_have_count(2)
    page.click("#bulk-replay")
    page.click("#confirm-yes")
    expect(page.locator("#dlq-table tbody tr")).to_have_count(0)
    assert redis.llen(keys.USERCOM.rq_queue_key(keys.REPLAY)) == 3

    # A user's trace.
    page.click('a[href="#/trace"]')
    page.fill("#trace-user", "u1")
    page.click("#trace-go")
    row = page.locator("#trace-table tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("delivered")
    expect(row).to_contain_text('email="u1@example.com"')
    expect(row).to_contain_text("evt_ok")
    page.screenshot(path="/tmp/console-trace.png", full_page=True)


def dlq_ids(redis: Redis) -> set[str]:
    return {item_id.decode() for item_id in redis.hkeys(keys.USERCOM.dlq[0])}


def test_bulk_replay_acts_on_the_filters_the_form_shows(page: Page, relay: tuple[str, Settings], redis: Redis) -> None:
    base_url, _ = relay
    sign_in(page, base_url)
    page.click('a[href="#/dlq"]')
    rows = page.locator("#dlq-table tbody tr")
    expect(rows).to_have_count(3)
    assert dlq_ids(redis) == {"stripe-evt_bad", "stripe-evt_bad2", "stripe-evt_bad3"}

    # Typed, never applied with Filter: the dialog names the filter, the list shows what it takes.
    page.fill("#f-user", "u3")
    page.click("#bulk-replay")
    expect(page.locator("#confirm-text")).to_have_text('Replay 1 dead letter(s) at usercom matching user_id="u3"?')
    expect(rows).to_have_count(1)
    expect(page.locator('tr[data-id="stripe-evt_bad2"]')).to_have_count(1)
    page.click("#confirm-yes")
    expect(page.locator("#flash")).to_contain_text('Replayed: {"replayed":1}')
    expect(rows).to_have_count(0)
    assert dlq_ids(redis) == {"stripe-evt_bad", "stripe-evt_bad3"}
    assert redis.llen(keys.USERCOM.rq_queue_key(keys.REPLAY)) == 1

    # A filter typed over the applied one wins too; nothing matches, cancel changes nothing.
    page.fill("#f-user", "")
    page.fill("#f-reason", "invalid_payload")
    page.click("#bulk-replay")
    expect(page.locator("#confirm-text")).to_have_text(
        'Replay 0 dead letter(s) at usercom matching reason="invalid_payload"?'
    )
    page.click("#confirm-no")
    expect(rows).to_have_count(0)

    # Fields cleared (but the last Filter still applied): the dialog says plainly it is everything.
    page.fill("#f-reason", "")
    page.click("#bulk-replay")
    expect(page.locator("#confirm-text")).to_have_text("Replay ALL dead letters at usercom (no filter): 2 item(s)?")
    expect(rows).to_have_count(2)
    page.click("#confirm-no")
    assert dlq_ids(redis) == {"stripe-evt_bad", "stripe-evt_bad3"}
    assert redis.llen(keys.USERCOM.rq_queue_key(keys.REPLAY)) == 1

    # A filter the admin API refuses is reported beside the form, nothing is replayed, and the
    # filter can be corrected there.
    page.fill("#f-reason", "no_such_reason")
    page.click("#bulk-replay")
    expect(page.locator("#bulk-error")).to_contain_text("reason: Must be one of")
    expect(page.locator("#confirm")).to_be_hidden()
    assert dlq_ids(redis) == {"stripe-evt_bad", "stripe-evt_bad3"}
    page.fill("#f-reason", "")
    page.click("#f-apply")
    expect(rows).to_have_count(2)


def test_bulk_replay_goes_in_batches_and_says_how_far_it_got_when_one_fails(
    page: Page, relay: tuple[str, Settings], redis: Redis
) -> None:
    base_url, _ = relay
    sign_in(page, base_url)
    page.click('a[href="#/dlq"]')
    rows = page.locator("#dlq-table tbody tr")
    expect(rows).to_have_count(3)
    page.evaluate("bulkBatch = 1")
    batches: list[dict[str, Any]] = []

    def second_batch_fails(route: Any) -> None:
        body = route.request.post_data_json
        if "batch" not in body:
            return route.continue_()
        batches.append(body)
        return route.abort() if len(batches) == 2 else route.continue_()

    page.route("**/admin/dlq/replay*", second_batch_fails)
    page.click("#bulk-replay")
    page.click("#confirm-yes")
    expect(page.locator("#bulk-error")).to_contain_text("Bulk replay stopped:")
    expect(page.locator("#flash")).to_have_text('Replayed 1 before it stopped: {"replayed":1}')
    expect(rows).to_have_count(2)
    assert batches[0] == {"all": True, "batch": 1} and batches[1]["cursor"]

    batches.clear()
    page.unroute("**/admin/dlq/replay*")
    page.route("**/admin/dlq/replay*", lambda route: batches.append(route.request.post_data_json) or route.continue_())
    page.click("#bulk-replay")
    page.click("#confirm-yes")
    expect(page.locator("#flash")).to_have_text('Replayed: {"replayed":2}')
    expect(rows).to_have_count(0)
    assert [body.get("dry_run", False) for body in batches] == [True, False, False]
    assert dlq_ids(redis) == set()


# Wraps the console's api(): once the first batch of a bulk replay has answered, the operator signs
# out, or leaves the page for the overview after choosing another destination.
AFTER_FIRST_BATCH = """(then) => {
  const actions = {
    signOut: () => document.getElementById("logout").click(),
    clickAgain: () => document.getElementById("bulk-replay").click(),
    leave: () => {
      document.getElementById("destination").add(new Option("elsewhere", "elsewhere", true, true));
      location.hash = "#/overview";
    },
  };
  const real = api;
  window.api = async (method, path, body, timeout) => {
    const answer = await real(method, path, body, timeout);
    if (body && body.batch && !body.cursor) actions[then]();
    return answer;
  };
}"""


def test_signing_out_stops_a_bulk_replay_before_its_next_batch(
    page: Page, relay: tuple[str, Settings], redis: Redis
) -> None:
    base_url, _ = relay
    sign_in(page, base_url)
    page.click('a[href="#/dlq"]')
    expect(page.locator("#dlq-table tbody tr")).to_have_count(3)
    page.evaluate("bulkBatch = 1")
    page.evaluate(AFTER_FIRST_BATCH, "signOut")
    batches: list[dict[str, Any]] = []
    page.route("**/admin/dlq/replay*", lambda route: batches.append(route.request.post_data_json) or route.continue_())
    page.click("#bulk-replay")
    page.click("#confirm-yes")
    expect(page.locator("#login-form")).to_be_visible()
    page.wait_for_timeout(1000)  # a batch sent after the sign-out would have gone by now
    assert [body for body in batches if "batch" in body] == [{"all": True, "batch": 1}]
    expect(page.locator("#login-error")).to_have_count(0)  # signed out by the operator, not refused
    assert len(dlq_ids(redis)) == 2
    page.fill("#token", TOKEN)  # signed in again in the same tab: the flash says what the replay did
    page.click("#login")
    page.click('a[href="#/dlq"]')
    expect(page.locator("#flash")).to_have_text('Replayed 1 before you signed out: {"replayed":1}')


def test_a_second_bulk_replay_waits_for_the_first_to_end(page: Page, relay: tuple[str, Settings], redis: Redis) -> None:
    base_url, _ = relay
    sign_in(page, base_url)
    page.click('a[href="#/dlq"]')
    expect(page.locator("#dlq-table tbody tr")).to_have_count(3)
    page.evaluate("bulkBatch = 1")
    page.evaluate(AFTER_FIRST_BATCH, "clickAgain")
    bodies: list[dict[str, Any]] = []
    page.route("**/admin/dlq/replay*", lambda route: bodies.append(route.request.post_data_json) or route.continue_())
    page.click("#bulk-replay")
    page.click("#confirm-yes")
    expect(page.locator("#flash")).to_have_text('Replayed: {"replayed":3}')
    assert [body.get("dry_run", False) for body in bodies] == [True, False, False, False]  # no second dry run
    expect(page.locator("#confirm")).to_be_hidden()
    assert dlq_ids(redis) == set()


def test_a_bulk_replay_goes_on_where_it_began_when_the_operator_leaves_the_page(
    page: Page, relay: tuple[str, Settings], redis: Redis
) -> None:
    """Its batches keep the destination it began at; what stops it is kept for the dead letters page."""
    base_url, _ = relay
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    sign_in(page, base_url)
    page.click('a[href="#/dlq"]')
    expect(page.locator("#dlq-table tbody tr")).to_have_count(3)
    page.evaluate("bulkBatch = 1")
    page.evaluate(AFTER_FIRST_BATCH, "leave")
    urls: list[str] = []

    def third_batch_fails(route: Any) -> None:
        if "batch" not in route.request.post_data_json:
            return route.continue_()
        urls.append(route.request.url)
        return route.abort() if len(urls) == 3 else route.continue_()

    page.route("**/admin/dlq/replay*", third_batch_fails)
    page.click("#bulk-replay")
    page.click("#confirm-yes")
    overview = page.locator("section.destination")
    expect(overview).to_be_visible()
    # The batches go on meanwhile, until the third fails: what stopped it waits for the dead letters page.
    page.wait_for_function("() => (state.flash || '').includes('Bulk replay stopped')")
    expect(overview).to_be_visible()
    assert len(urls) == 3 and all(url == f"{base_url}/admin/dlq/replay?destination=usercom" for url in urls), urls
    assert errors == []
    page.select_option("#destination", "usercom")
    page.click('a[href="#/dlq"]')
    expect(page.locator("#flash")).to_contain_text('Replayed 2 before it stopped: {"replayed":2}')
    expect(page.locator("#flash")).to_contain_text("Bulk replay stopped:")
    assert len(dlq_ids(redis)) == 1


def test_console_says_when_the_admin_api_is_disabled(page: Page, env: dict[str, str], redis: Redis) -> None:
    server = BackgroundServer(create_app(Settings.from_env(env))).start()
    try:
        page.goto(f"{server.base_url}/console")
        expect(page.locator("#disabled")).to_contain_text("The admin API is disabled")
        page.screenshot(path="/tmp/console-disabled.png", full_page=True)
    finally:
        server.stop()


@contextmanager
def redis_paused(redis_server: RedisProcess) -> Iterator[None]:
    """The Redis the web uses stopped (SIGSTOP), as a hung server: connections open, no answer."""
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        redis_server.process.send_signal(signal.SIGCONT)


STALE = re.compile(r"\bstale\b")
WHEN = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def test_the_overview_says_when_its_refresh_fails_and_when_it_recovers(
    page: Page, relay: tuple[str, Settings], redis_server: RedisProcess
) -> None:
    base_url, _ = relay
    sign_in(page, base_url)
    warning, refreshed = page.locator("#refresh-error"), page.locator("#refreshed")
    card = page.locator('section.destination[data-name="usercom"]')
    expect(refreshed).to_have_text(re.compile(rf"^Refreshed {WHEN}, every 3 s\.$"))
    expect(warning).to_have_count(0)
    with redis_paused(redis_server):
        # /status answers 503 with {"error": {"code": "redis_unavailable", "message": ...}}: the page says so.
        expect(warning).to_have_text(
            re.compile(
                rf"^Refresh failed at {WHEN}: redis is not reachable; retry later \(HTTP 503 redis_unavailable\); "
                rf"showing data from ({WHEN})\.$"
            )
        )
        expect(card).to_have_class(STALE)
        expect(card.locator("h2")).to_contain_text("(stale: as of ")
        expect(refreshed).to_have_text(re.compile(rf"^Last refreshed {WHEN}; retrying every 3 s\.$"))
        last = re.findall(WHEN, refreshed.inner_text())[0]  # the time of the figures still shown
        assert warning.inner_text().endswith(f"showing data from {last}.")
        expect(card.locator('[data-field="dlq-size"]')).to_have_text("3")
        page.screenshot(path="/tmp/console-overview-stale.png", full_page=True)
    expect(warning).to_have_count(0)
    expect(card).not_to_have_class(STALE)
    expect(refreshed).to_have_text(re.compile(rf"^Refreshed {WHEN}, every 3 s\.$"))


def test_ids_that_hold_a_slash_reach_their_trace_and_dead_letter(
    page: Page, relay: tuple[str, Settings], redis_server: RedisProcess
) -> None:
    """User ids may hold "/" ("org/42"), and so may the event id of a dead letter a backfill filed."""
    base_url, settings = relay
    ctx = build_context(settings, "usercom")
    configure(ctx)
    assert ctx.store.accept(update("evt_slash", "org/42"))
    SimpleWorker([ctx.queues[keys.LIVE]], connection=ctx.redis, serializer=JSONSerializer).work(burst=True)
    payload = {"id": "evt/1", "type": "customer.updated", "data": {"object": {"email": 42}}}
    item = invalid_item(
        "stripe", "evt/1", "evt/1", Described("evt/1", "customer.updated", 100), payload, ValidationError("x"), "bad"
    )
    assert ctx.store.reject(item, "evt/1")
    ctx.redis.close()
    sign_in(page, base_url)

    page.click('a[href="#/trace"]')
    page.fill("#trace-user", "org/42")
    with redis_paused(redis_server):  # a trace that cannot be read keeps its form, to try again
        page.click("#trace-go")
        expect(page.locator("#trace-error")).to_have_text(
            'The trace of "org/42" could not be loaded: redis is not reachable; retry later'
        )
    expect(page.locator("#trace-user")).to_have_value("org/42")
    page.click("#trace-go")
    row = page.locator("#trace-table tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("evt_slash")
    expect(row).to_contain_text('email="org/42@example.com"')
    expect(page.locator("main")).to_contain_text("1 entries for org/42 at usercom")
    expect(page.locator("#trace-error")).to_have_count(0)

    page.click('a[href="#/dlq"]')
    page.click('tr[data-id="stripe-evt/1"] a')
    expect(page.locator("#item-json")).to_contain_text('"id": "stripe-evt/1"')
    page.click("#delete")
    page.click("#confirm-yes")
    expect(page.locator("#flash")).to_contain_text("Delete: stripe-evt/1")
    expect(page.locator('tr[data-id="stripe-evt/1"]')).to_have_count(0)
