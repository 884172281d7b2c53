"""`relay sync stripe`: customers and subscriptions read from the Stripe API double become the
updates their events would make, stamped with the read time; twice sends nothing new; an
interrupted sync continues from its Redis checkpoint; a webhook newer than the snapshot wins."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from redis import Redis

from service.backfill.feed import Feeder
from service.backfill.stripe_reader import StripeReader
from service.backfill.sync import Checkpoint, sync
from service.cli import main
from service.config import Settings
from service.devtools.stripe_api import StripeApiServer
from service.devtools.usercom_sandbox import SandboxServer
from service.store import keys
from service.store.ledger import Store
from tests.conftest import stripe_event
from tests.integration.conftest import API_KEY
from tests.integration.test_backfill import drain, run
from tests.stripe_history import customer, subscription


def seed(stripe_api: StripeApiServer, users: int) -> None:
    for n in range(users):
        stripe_api.state.customers.append(customer(n, created=1_700_000_000 + n))
        stripe_api.state.subscriptions.append(subscription(n, created=1_700_000_000 + n, plan="basic", status="active"))


def usercom_calls(sandbox: SandboxServer) -> int:
    return sum(1 for r in sandbox.state.requests if r["path"].startswith("/api/public/"))


def test_sync_twice_sends_nothing_new_and_a_live_subscription_beats_the_one_it_replaced(
    api_env: dict[str, str], stripe_api: StripeApiServer, sandbox: SandboxServer, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings.from_env(api_env)
    seed(stripe_api, users=5)
    # user-0 moved from a canceled "legacy" subscription (created later) to its active one
    stripe_api.state.subscriptions.append(
        subscription(0, created=1_800_000_000, plan="legacy", status="canceled", item=1)
    )
    code, first = run(capsys, "sync", "stripe", "--json")
    assert (code, first["accepted"], first["duplicate"], first["resumed"]) == (0, 11, 0, False)
    drain(settings)
    for n in range(5):
        user = sandbox.state.user_by_custom_id(f"user-{n}")
        assert user is not None and user["email"] == f"user{n}@example.com"
        assert (user["attributes"]["plan"], user["attributes"]["subscription_status"]) == ("basic", "active")
    calls = usercom_calls(sandbox)
    code, second = run(capsys, "sync", "stripe", "--json")
    assert (code, second["accepted"], second["duplicate"]) == (0, 0, 11)
    drain(settings)
    assert usercom_calls(sandbox) == calls


def test_a_webhook_newer_than_the_snapshot_wins_an_older_one_does_not(
    api_env: dict[str, str],
    stripe_api: StripeApiServer,
    sandbox: SandboxServer,
    post_event: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = Settings.from_env(api_env)
    seed(stripe_api, users=2)
    before = int(time.time())
    assert run(capsys, "sync", "stripe", "--json")[0] == 0
    after = int(time.time())
    newer = subscription(0, created=1, plan="team", status="active")
    older = subscription(1, created=1, plan="pro", status="past_due")
    assert post_event(stripe_event("customer.subscription.updated", newer, event_id="evt_new", created=after + 2))
    assert post_event(stripe_event("customer.subscription.updated", older, event_id="evt_old", created=before - 100))
    drain(settings)  # the live lane first: the snapshot on the backfill lane comes after both webhooks
    attributes = {n: sandbox.state.user_by_custom_id(f"user-{n}")["attributes"] for n in (0, 1)}  # type: ignore[index]
    assert attributes[0]["plan"] == "team"
    assert (attributes[1]["plan"], attributes[1]["subscription_status"]) == ("basic", "active")


def test_a_change_made_once_the_page_was_built_wins_over_the_snapshot(
    api_env: dict[str, str],
    stripe_api: StripeApiServer,
    sandbox: SandboxServer,
    post_event: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Stripe changes the subscription after building the page that still shows the old plan, in the same
    second: the change's webhook is newer than the snapshot, whenever the page arrives."""
    settings = Settings.from_env(api_env)
    seed(stripe_api, users=1)
    changed: list[dict[str, Any]] = []

    def change(path: str) -> None:
        if path == "/v1/subscriptions" and not changed:
            changed.append(subscription(0, created=1_700_000_000, plan="pro", status="active"))
            stripe_api.state.subscriptions[0] = changed[0]
            made = int(time.time())  # the change's event is dated the second it was made
            changed.append(stripe_event("customer.subscription.updated", changed[0], event_id="evt_pro", created=made))

    stripe_api.state.after_page = change
    assert run(capsys, "sync", "stripe", "--json")[0] == 0
    assert post_event(changed[1])
    drain(settings)
    assert sandbox.state.user_by_custom_id("user-0")["attributes"]["plan"] == "pro"  # type: ignore[index]


def test_an_interrupted_sync_continues_from_its_checkpoint(
    api_env: dict[str, str], stripe_api: StripeApiServer, redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings.from_env(api_env)
    seed(stripe_api, users=150)
    stop = threading.Event()
    stop.set()  # as Ctrl-C during the first page
    feeder = Feeder(settings, Store.from_settings(redis, settings), "stripe")
    summary = sync(StripeReader(API_KEY, stripe_api.base_url, max_rps=1000), feeder, stop=stop)
    # the first page: 100 subscriptions, each with its customer
    assert summary["interrupted"] and summary["accepted"] == 200
    assert Checkpoint(redis, "stripe").load() == ("subscriptions", "sub_000050_0")  # newest first: 149 .. 50
    code, rest = run(capsys, "sync", "stripe", "--json")
    # the other 50 with theirs, then the customers: the 100 fed before the interruption are duplicates
    assert (code, rest["resumed"], rest["accepted"], rest["duplicate"]) == (0, True, 100, 100)
    assert not redis.exists(keys.sync_checkpoint("stripe"))
    ledger = Store.from_settings(redis, settings).ledger()
    assert ledger["received"] == 300  # each customer and subscription once


def test_a_resumed_sync_stamps_with_the_start_of_the_run_it_continues(redis: Redis) -> None:
    """What makes no subscriber is stamped before the run began (ReadTimes.ended): a run resumed later
    must keep the first start, or its pages' ended subscriptions outrank the live ones read before."""
    first = Checkpoint(redis, "stripe")
    first.started -= 3600  # begun an hour ago
    first.save("subscriptions", "sub_000050_0")
    resumed = Checkpoint(redis, "stripe")
    assert resumed.load() == ("subscriptions", "sub_000050_0")
    assert resumed.started == first.started
    redis.hdel(keys.sync_checkpoint("stripe"), "started")  # written by a relay that did not keep it
    older = Checkpoint(redis, "stripe")
    now = older.started
    assert older.load() is not None and older.started == now


def test_a_checkpoint_from_the_old_phase_order_starts_over(
    api_env: dict[str, str], stripe_api: StripeApiServer, redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(stripe_api, users=3)
    redis.hset(keys.sync_checkpoint("stripe"), mapping={"phase": "customers", "after": "cus_000001", "at": 1})
    code, summary = run(capsys, "sync", "stripe", "--json")
    assert (code, summary["resumed"], summary["accepted"]) == (0, False, 6)  # subscriptions were not skipped


@pytest.mark.parametrize(("interrupted", "then"), [(["--customers-only"], []), ([], ["--customers-only"])])
def test_a_checkpoint_of_the_other_mode_starts_over(
    api_env: dict[str, str],
    stripe_api: StripeApiServer,
    redis: Redis,
    capsys: pytest.CaptureFixture[str],
    interrupted: list[str],
    then: list[str],
) -> None:
    """A full sync does not take a `--customers-only` run's place in the customers as its own (it would
    skip the subscriptions), nor the other way round."""
    seed(stripe_api, users=150)  # two pages
    # Stripe fails once the first page is read: the sync stops with a checkpoint after that page.
    stripe_api.state.after_page = lambda _path: stripe_api.state.fail_next(500, times=5)
    code, _ = run(capsys, "sync", "stripe", "--json", *interrupted)
    stripe_api.state.after_page = None
    stripe_api.state.faults.clear()
    assert code == 3 and redis.exists(keys.sync_checkpoint("stripe"))
    code, summary = run(capsys, "sync", "stripe", "--json", *then)
    assert (code, summary["resumed"], summary["interrupted"]) == (0, False, False)
    assert summary["accepted"] == (150 if then else 300) - summary["duplicate"]
    assert summary["duplicate"] == 100  # the first page, fed before the interruption


def test_a_failed_read_speaks_of_a_checkpoint_only_when_one_was_kept(
    api_env: dict[str, str],
    stripe_api: StripeApiServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed(stripe_api, users=150)  # two pages
    monkeypatch.setenv("STRIPE_API_KEY", "rk_test_not_the_right_key_42")  # refused at the first read
    assert main(["sync", "stripe", "--json"]) == 3
    refused = capsys.readouterr().err
    assert "401" in refused and "checkpoint" not in refused
    monkeypatch.setenv("STRIPE_API_KEY", API_KEY)
    stripe_api.state.after_page = lambda _path: stripe_api.state.fail_next(500, times=5)  # fails after a page
    assert main(["sync", "stripe", "--json"]) == 3
    assert capsys.readouterr().err.endswith(" (run it again: it continues from its checkpoint)\n")


def test_each_user_is_sent_once_customer_and_subscription_together(
    api_env: dict[str, str], stripe_api: StripeApiServer, sandbox: SandboxServer, redis: Redis
) -> None:
    settings = Settings.from_env(api_env)
    seed(stripe_api, users=120)
    stripe_api.state.customers.append(customer(999, created=1_700_000_999))  # no subscription
    sandbox.state.seed([f"user-{n}" for n in (*range(120), 999)])  # existing users: one PUT per update

    class DeliveringReader(StripeReader):
        """Workers deliver everything pending between two pages, as they do during a long sync."""

        def pages(self, resource: str, params: dict[str, Any], after: str | None = None) -> Any:
            for page in super().pages(resource, params, after):
                yield page
                drain(settings)

    reader = DeliveringReader(API_KEY, stripe_api.base_url, max_rps=1000)
    summary = sync(reader, Feeder(settings, Store.from_settings(redis, settings), "stripe"))
    assert (summary["accepted"], summary["duplicate"]) == (241, 0)
    assert {r["path"] for r in stripe_api.state.requests} == {"/v1/subscriptions", "/v1/customers"}
    writes = [r for r in sandbox.state.requests if r["method"] in ("PUT", "POST")]
    assert len(writes) == 121  # one per user
    assert sandbox.state.user_by_custom_id("user-999")["email"] == "user999@example.com"  # type: ignore[index]


@pytest.mark.parametrize(
    ("status", "ended_at"),
    [
        ("canceled", 1_650_000_000),
        # no end time: stamped the second before a read, its page's read outranked page 1's
        ("unpaid", None),
        ("incomplete", None),
        # "now" on a provider clock ahead of ours: its end outranked page 1's read
        ("canceled", int(time.time()) + 3600),
    ],
    ids=["canceled", "unpaid", "incomplete", "ended-ahead"],
)
def test_a_live_subscription_beats_one_making_no_subscriber_read_on_a_later_page(
    api_env: dict[str, str],
    stripe_api: StripeApiServer,
    sandbox: SandboxServer,
    redis: Redis,
    capsys: pytest.CaptureFixture[str],
    status: str,
    ended_at: int | None,
) -> None:
    settings = Settings.from_env(api_env)
    stripe_api.state.customers.extend(customer(n, created=1_700_000_000 + n) for n in (0, 1))
    ended = subscription(0, created=1_600_000_000, plan="legacy", status=status, item=1)
    ended.update(canceled_at=ended_at, ended_at=ended_at, cancel_at=None, cancel_at_period_end=False)
    # newest first, 100 a page: user-0's live subscription opens page 1, the one it replaced ends page 2
    between = [subscription(1, created=1_700_000_000 + i, plan="basic", status="active", item=i) for i in range(149)]
    live = subscription(0, created=1_800_000_000, plan="team", status="active")
    stripe_api.state.subscriptions.extend([ended, *between, live])
    # --max-rps 0.5: page 2 is read two seconds after page 1, so its read time is a later second
    code, summary = run(capsys, "sync", "stripe", "--json", "--max-rps", "0.5")
    assert (code, summary["accepted"], summary["api_calls"]) == (0, 153, 3)
    drain(settings)
    user = sandbox.state.user_by_custom_id("user-0")
    assert user is not None
    assert (user["attributes"]["subscription_status"], user["attributes"]["plan"]) == ("active", "team")
    assert user["attributes"]["mrr"] == 20.0 and "subscriber" in user["tags"]


def test_a_customer_whose_only_subscription_ended_has_no_mrr_and_is_no_subscriber(
    api_env: dict[str, str],
    stripe_api: StripeApiServer,
    sandbox: SandboxServer,
    redis: Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = Settings.from_env(api_env)
    stripe_api.state.customers.extend(customer(n, created=1_700_000_000 + n) for n in (0, 1))
    canceled = subscription(0, created=1_700_000_000, plan="pro", status="canceled")
    expired = subscription(1, created=1_700_000_001, plan="pro", status="incomplete_expired")
    stripe_api.state.subscriptions.extend([canceled, expired])
    assert run(capsys, "sync", "stripe", "--json")[0] == 0
    drain(settings)
    for n, status in ((0, "canceled"), (1, "incomplete_expired")):
        user = sandbox.state.user_by_custom_id(f"user-{n}")
        assert user is not None and user["attributes"]["subscription_status"] == status
        assert user["attributes"]["mrr"] == 0 and "subscriber" not in user["tags"]
