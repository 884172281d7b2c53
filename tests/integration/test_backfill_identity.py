"""A customer whose user id changed over time, fed by webhooks in the order the events happened and by
`relay backfill stripe`, which reads them newest first: the same user is learned for the customer, the
same events are delivered to it and the same ones are dead-lettered as `identity_conflict`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from redis import Redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from service.backfill.events import Window, backfill_events
from service.backfill.feed import Feeder
from service.backfill.stripe_reader import StripeReader
from service.cli import main
from service.config import Settings
from service.devtools.stripe_api import StripeApiServer
from service.devtools.usercom_sandbox import SandboxServer
from service.store import keys
from service.store.ledger import Store
from tests.conftest import stripe_event
from tests.integration.conftest import API_KEY
from tests.stripe_history import customer, subscription
from workers.delivery.context import configure
from workers.runner import build_context


def rekeyed_history(start: int) -> list[dict[str, Any]]:
    """Oldest first: cus_000001 belongs to user "old-1" (its customer and subscription events), then the
    app names "new-1" for it (its metadata changed); a charge naming the customer only comes last."""
    before = customer(1, created=start)
    before["metadata"] = {"user_id": "old-1"}
    after = {**before, "email": "renamed@example.com", "metadata": {"user_id": "new-1"}}
    sub_before = subscription(1, created=start, plan="basic", status="active")
    sub_before["metadata"] = {"user_id": "old-1"}
    sub_after = {**subscription(1, created=start, plan="team", status="active"), "metadata": {"user_id": "new-1"}}
    charge = {"id": "ch_1", "object": "charge", "amount_refunded": 500, "currency": "usd", "customer": before["id"]}
    return [
        stripe_event("customer.updated", before, event_id="evt_1_old_customer", created=start + 1),
        stripe_event("customer.subscription.created", sub_before, event_id="evt_2_old_sub", created=start + 2),
        stripe_event("customer.updated", after, event_id="evt_3_new_customer", created=start + 3),
        stripe_event("customer.subscription.updated", sub_after, event_id="evt_4_new_sub", created=start + 4),
        stripe_event("charge.refunded", charge, event_id="evt_5_charge", created=start + 5),
    ]


def drain(settings: Settings) -> None:
    ctx = build_context(settings, "usercom")
    configure(ctx)
    for lane in (keys.LIVE, keys.BACKFILL):
        SimpleWorker([ctx.queues[lane]], connection=ctx.redis, serializer=JSONSerializer).work(burst=True)
    ctx.redis.close()


def outcome(settings: Settings, redis: Redis, sandbox: SandboxServer) -> dict[str, Any]:
    """What the CRM and the relay hold once every job ran."""
    drain(settings)
    users = {}
    for custom_id in ("old-1", "new-1"):
        user = sandbox.state.user_by_custom_id(custom_id)
        users[custom_id] = (
            None if user is None else {k: user["attributes"].get(k) for k in ("plan", "last_refund_amount")}
        )
    store = Store.from_settings(redis, settings)
    conflicts = sorted(item["event_id"] for item in store.dead_letters() if item["reason"] == "identity_conflict")
    learned = redis.hget(keys.customer_map("stripe"), "cus_000001")
    ledger = store.ledger()
    return {
        "users": users,
        "conflicts": conflicts,
        "learned": learned.decode() if learned else None,
        "balanced": ledger["received"] == ledger["delivered"] + ledger["coalesced"] + ledger["dead_lettered"],
    }


# What webhooks in event order give: the first user named for the customer is learned and never
# re-pointed; the events naming another user for it are kept as identity conflicts.
LIVE_ORDER = {
    "users": {"old-1": {"plan": "basic", "last_refund_amount": 5.0}, "new-1": None},
    "conflicts": ["evt_3_new_customer", "evt_4_new_sub"],
    "learned": "old-1",
    "balanced": True,
}


def test_webhooks_in_event_order_keep_the_first_user_learned_for_a_customer(
    env: dict[str, str], redis: Redis, sandbox: SandboxServer, post_event: Callable[..., Any]
) -> None:
    settings = Settings.from_env(env)
    for event in rekeyed_history(int(time.time()) - 600):
        assert post_event(event).status_code in (202, 200), event["id"]
    assert outcome(settings, redis, sandbox) == LIVE_ORDER


@pytest.mark.parametrize("page_events", [100, 2], ids=["one-page", "a-page-each-two"])
@pytest.mark.parametrize("command", ["backfill", "reconcile"])
def test_a_backfill_read_newest_first_gives_what_webhooks_in_event_order_give(
    api_env: dict[str, str],
    stripe_api: StripeApiServer,
    redis: Redis,
    sandbox: SandboxServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    page_events: int,
    command: str,
) -> None:
    monkeypatch.setattr("service.backfill.stripe_reader.PAGE_SIZE", page_events)
    for event in rekeyed_history(int(time.time()) - 600):
        stripe_api.state.add_event(event)
    assert main([command, "stripe", "--since", "1h", "--json"]) == 0
    capsys.readouterr()
    assert outcome(Settings.from_env(api_env), redis, sandbox) == LIVE_ORDER
    assert not redis.keys(keys.first_users("stripe", "*"))  # the run's notes are gone


@pytest.mark.parametrize(
    ("hold_up_to", "hold_bytes", "reads"),
    [(10_000, 8 << 20, 1), (1, 8 << 20, 2), (10_000, 3000, 2)],
    ids=["held", "past-the-hold", "past-the-bytes"],
)
def test_a_reconcile_reads_its_window_once_when_what_is_missing_fits_in_memory(
    api_env: dict[str, str],
    stripe_api: StripeApiServer,
    redis: Redis,
    sandbox: SandboxServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    hold_up_to: int,
    hold_bytes: int,
    reads: int,
) -> None:
    """The missing events are few (the periodic reconcile's): held while the window is read, their first
    users learned, then fed, with one read of the provider's API. More than it holds: a second read feeds,
    and nothing is counted twice."""
    monkeypatch.setattr("service.backfill.stripe_reader.PAGE_SIZE", 2)  # 5 events: 3 pages
    monkeypatch.setattr("service.backfill.events.HOLD_UP_TO", hold_up_to)
    monkeypatch.setattr("service.backfill.events.HOLD_BYTES", hold_bytes)  # 3000: past it within the 5 events
    for event in rekeyed_history(int(time.time()) - 600):
        stripe_api.state.add_event(event)
    assert main(["reconcile", "stripe", "--since", "1h", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["api_calls"], summary["read"], summary["missing"]) == (3 * reads, 5, 5)
    assert (summary["accepted"], summary["invalid"]) == (3, 2)  # the two naming "new-1" kept as conflicts
    assert outcome(Settings.from_env(api_env), redis, sandbox) == LIVE_ORDER


def test_a_customer_learned_before_the_backfill_is_never_re_pointed_by_it(
    api_env: dict[str, str],
    stripe_api: StripeApiServer,
    redis: Redis,
    sandbox: SandboxServer,
    post_event: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The relay received only the newest customer event live: it learned "new-1" then, and the older
    events read back later are the conflicts (as they would be arriving late as webhooks)."""
    events = rekeyed_history(int(time.time()) - 600)
    for event in events:
        stripe_api.state.add_event(event)
    assert post_event(events[2]).status_code == 202
    assert main(["backfill", "stripe", "--since", "1h", "--json"]) == 0
    capsys.readouterr()
    got = outcome(Settings.from_env(api_env), redis, sandbox)
    assert (got["learned"], got["conflicts"]) == ("new-1", ["evt_1_old_customer", "evt_2_old_sub"])
    assert got["users"]["old-1"] is None and got["balanced"]


def test_a_stop_while_the_window_is_read_for_its_first_users_feeds_and_learns_nothing(
    api_env: dict[str, str], stripe_api: StripeApiServer, redis: Redis
) -> None:
    """Part of the window's notes would name a newer user than its oldest event: nothing is learned, and
    nothing fed (the same command starts again)."""
    settings = Settings.from_env(api_env)
    for event in rekeyed_history(int(time.time()) - 600):
        stripe_api.state.add_event(event)
    stop = threading.Event()
    stop.set()  # as Ctrl-C during the first read
    feeder = Feeder(settings, Store.from_settings(redis, settings), "stripe")
    reader = StripeReader(API_KEY, stripe_api.base_url, max_rps=1000)
    result = backfill_events(reader, feeder, Window(int(time.time()) - 3600), ["customer.updated"], stop=stop)
    assert (result.interrupted, result.resume_until, result.summary["read"]) == (True, None, 0)
    assert not redis.hgetall(keys.customer_map("stripe")) and not redis.keys(keys.first_users("stripe", "*"))
