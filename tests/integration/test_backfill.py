"""`relay backfill stripe` against the Stripe API double, driven through the official stripe package:
events the relay never received as webhooks are fed through the webhook path on the backfill
lane; events it did receive are counted as duplicates and never queued twice; an old event read
back late never overwrites newer state (last-writer-wins by event time)."""

from __future__ import annotations

import json
import re
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
from service.store.customer_map import IdentityConflict
from service.store.ledger import Store
from tests.conftest import an_update, stripe_event
from tests.integration.conftest import API_KEY
from tests.integration.redis_launch import wait_until
from tests.stripe_history import final_plans, history
from workers.delivery.context import configure
from workers.runner import build_context


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(list(argv))
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1]) if out else {}


def drain(settings: Settings) -> None:
    """Live lane first, then the backfill lane: older events read back late come after newer state."""
    ctx = build_context(settings, "usercom")
    configure(ctx)
    for lane in (keys.LIVE, keys.BACKFILL):
        SimpleWorker([ctx.queues[lane]], connection=ctx.redis, serializer=JSONSerializer).work(burst=True)


def lose_a_third(
    stripe_api: StripeApiServer, post_event: Callable[..., Any], events: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Every event is in Stripe; every third never reached the relay (and Stripe knows it)."""
    lost = []
    for n, event in enumerate(events):
        delivered = n % 3 != 0
        stripe_api.state.add_event(event, delivered=delivered)
        if delivered:
            assert post_event(event).status_code == 202
        else:
            lost.append(event)
    return lost


def test_backfill_brings_the_crm_to_the_state_of_the_whole_history(
    api_env: dict[str, str],
    stripe_api: StripeApiServer,
    post_event: Callable[..., Any],
    sandbox: SandboxServer,
    redis: Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = Settings.from_env(api_env)
    events = history(users=6, steps=4, start=int(time.time()) - 3600)
    lost = lose_a_third(stripe_api, post_event, events)
    code, summary = run(capsys, "backfill", "stripe", "--since", "2h", "--json")
    assert code == 0
    assert (summary["read"], summary["accepted"], summary["duplicate"]) == (
        len(events),
        len(lost),
        len(events) - len(lost),
    )
    # Each lost event is merged into its user's pending state: a user with nothing pending gets one
    # backfill job, one whose live job waits already is delivered by it (never one job per event).
    assert redis.llen(keys.USERCOM.rq_queue_key(keys.BACKFILL)) + redis.llen(keys.USERCOM.rq_queue_key(keys.LIVE)) > 0
    assert redis.llen(keys.USERCOM.rq_queue_key(keys.BACKFILL)) <= len(lost)
    drain(settings)
    for user, (plan, status) in final_plans(events).items():
        attributes = sandbox.state.user_by_custom_id(user)["attributes"]  # type: ignore[index]
        assert (attributes["plan"], attributes["subscription_status"]) == (plan, status), user
    ledger = Store.from_settings(redis, settings).ledger()
    assert ledger["received"] == len(events) and ledger["in_flight"] == 0
    assert ledger["delivered"] + ledger["coalesced"] == len(events) and ledger["dead_lettered"] == 0
    # Again: everything is a duplicate, nothing is queued.
    code, again = run(capsys, "backfill", "stripe", "--since", "2h", "--json")
    assert (code, again["accepted"], again["duplicate"]) == (0, 0, len(events))
    assert Store.from_settings(redis, settings).ledger()["received"] == len(events)


def test_undelivered_only_asks_stripe_for_what_no_endpoint_acknowledged(
    api_env: dict[str, str],
    stripe_api: StripeApiServer,
    post_event: Callable[..., Any],
    redis: Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    events = history(users=3, steps=2, start=int(time.time()) - 600)
    lost = lose_a_third(stripe_api, post_event, events)
    code, summary = run(
        capsys,
        "backfill",
        "stripe",
        "--since",
        "1h",
        "--types",
        "customer.subscription.*",
        "--undelivered-only",
        "--json",
    )
    wanted = [e for e in lost if e["type"].startswith("customer.subscription.")]
    assert (code, summary["read"], summary["accepted"], summary["duplicate"]) == (0, len(wanted), len(wanted), 0)
    args = stripe_api.state.requests[-1]["args"]
    assert args["delivery_success"] == ["false"] and "created[gte]" in args
    mapped = Settings.from_env(api_env).mapping.rules["stripe"]
    subscription_types = sorted(t for t in mapped if t.startswith("customer.subscription."))
    assert sorted(v for k, vs in args.items() if k.startswith("types[") for v in vs) == subscription_types


def test_dry_run_counts_and_queues_nothing(
    api_env: dict[str, str], stripe_api: StripeApiServer, redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    for event in history(users=2, steps=1, start=int(time.time()) - 60):
        stripe_api.state.add_event(event)
    code, summary = run(capsys, "backfill", "stripe", "--since", "1h", "--dry-run", "--json")
    assert (code, summary["accepted"], summary["dry_run"]) == (0, 4, True)
    assert redis.llen(keys.USERCOM.rq_queue_key(keys.BACKFILL)) == 0 and not redis.keys("relay:dedup:*")


def test_a_dry_run_says_what_it_would_queue_not_what_it_accepted(
    api_env: dict[str, str],
    stripe_api: StripeApiServer,
    redis: Redis,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = int(time.time())
    for event in history(users=2, steps=1, start=now - 60):
        stripe_api.state.add_event(event)
    refund = {"id": "ch_1", "object": "charge", "amount_refunded": 500, "currency": "usd", "customer": None}
    stripe_api.state.add_event(stripe_event("charge.refunded", refund, event_id="evt_nobody", created=now - 30))
    code, summary = run(capsys, "backfill", "stripe", "--since", "1h", "--dry-run", "--json")
    # Naming no one, the refund would be dead-lettered, not queued; `accepted` stays for the scripts that read it.
    assert (code, summary["would_queue"], summary["invalid"], summary["accepted"]) == (0, 4, 1, 4)
    code, found = run(capsys, "reconcile", "stripe", "--since", "1h", "--until", str(now), "--dry-run", "--json")
    assert (code, found["missing"], found["would_queue"], found["healed"]) == (0, 5, 4, 4)
    assert "5 events never received, 4 would be queued (dry run)" in caplog.text
    assert main(["backfill", "stripe", "--since", "1h", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    rows = dict(re.findall(r"^│ (\w+)\s+│\s+(\S+) │$", out, re.MULTILINE))
    assert (rows["would_queue"], rows["dry_run"]) == ("4", "True") and "accepted" not in rows
    assert "4 would queue" in err and "accepted" not in err  # the progress bar
    assert main(["reconcile", "stripe", "--since", "1h", "--until", str(now), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would_queue" in out and "healed" not in out
    assert redis.llen(keys.USERCOM.rq_queue_key(keys.BACKFILL)) == 0 and not redis.keys("relay:dedup:*")
    assert not redis.keys("relay:dlq:*")


def test_types_take_mapped_names_and_patterns(
    api_env: dict[str, str], stripe_api: StripeApiServer, redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    for event in history(users=2, steps=1, start=int(time.time()) - 60):
        stripe_api.state.add_event(event)
    types = "customer.updated, customer.subscription.*"
    code, summary = run(capsys, "backfill", "stripe", "--since", "1h", "--types", types, "--json")
    assert (code, summary["read"]) == (0, 4)
    mapped = Settings.from_env(api_env).mapping.rules["stripe"]
    wanted = sorted(t for t in mapped if t == "customer.updated" or t.startswith("customer.subscription."))
    args = stripe_api.state.requests[-1]["args"]
    assert sorted(v for k, vs in args.items() if k.startswith("types[") for v in vs) == wanted


def test_a_429_backs_off_and_the_read_goes_on(
    api_env: dict[str, str], stripe_api: StripeApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    for event in history(users=2, steps=1, start=int(time.time()) - 60):
        stripe_api.state.add_event(event)
    stripe_api.state.fail_next(429, "0", times=2)
    code, summary = run(capsys, "backfill", "stripe", "--since", "1h", "--json")
    # The window is read twice (its customers' first users, then the feed): two reads, two 429s.
    assert (code, summary["accepted"], summary["rate_limited"], summary["api_calls"]) == (0, 4, 2, 4)


def test_a_refused_key_stops_with_one_line_without_the_key(
    api_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STRIPE_API_KEY", "rk_test_not_the_right_key_42")
    assert main(["backfill", "stripe", "--since", "1h", "--json"]) == 3
    err = capsys.readouterr().err
    assert "STRIPE_API_KEY" in err and "401" in err and "not_the_right_key" not in err
    assert "resume with" not in err  # nothing was fed: the same command again is no resume


def test_a_provider_failing_part_way_says_how_to_resume(
    api_env: dict[str, str], stripe_api: StripeApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 3 said why, not how to go on from what was fed (as Ctrl-C and a lost Redis do)."""
    start = int(time.time()) - 3600
    events = history(users=50, steps=2, start=start)  # 150 events: two pages
    for event in events:
        stripe_api.state.add_event(event)

    def fail_the_second_page_fed() -> None:  # the window is read twice: its first users, then the feed
        wait_until(lambda: len(stripe_api.state.requests) >= 3, timeout=60, what="the first page fed")
        stripe_api.state.fail_next(500)

    threading.Thread(target=fail_the_second_page_fed, daemon=True).start()
    code = main(["backfill", "stripe", "--since", str(start - 60), "--max-rps", "0.5", "--json"])  # 2 s a read
    resume = f"relay backfill stripe --since {start - 60} --until {events[-100]['created']} --max-rps 0.5"
    assert (code, capsys.readouterr().err.splitlines()[-1]) == (3, f"relay: Stripe answered 500; resume with: {resume}")


@pytest.mark.parametrize("since", ["yesterday", "2026-01-01T00:00:00"])
def test_a_bad_since_is_one_line_exit_2(
    api_env: dict[str, str], since: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["backfill", "stripe", "--since", since]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_stop_ends_after_the_page_and_the_resume_command_finishes_the_work(
    api_env: dict[str, str], stripe_api: StripeApiServer, redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings.from_env(api_env)
    events = history(users=50, steps=2, start=int(time.time()) - 3600)  # 150 events: two pages
    for event in events:
        stripe_api.state.add_event(event)
    stop = threading.Event()
    # As Ctrl-C during the first page fed: the window is read twice, its first users (two pages), then the feed.
    stripe_api.state.after_page = lambda _path: stop.set() if len(stripe_api.state.requests) >= 3 else None
    feeder = Feeder(settings, Store.from_settings(redis, settings), "stripe")
    reader = StripeReader(API_KEY, stripe_api.base_url, max_rps=1000)
    since = int(time.time()) - 7200
    types = sorted(settings.mapping.rules["stripe"])
    result = backfill_events(reader, feeder, Window(since), types, stop=stop)
    assert result.interrupted and result.summary["accepted"] == 100
    assert result.resume_until == events[-100]["created"]
    code, rest = run(capsys, "backfill", "stripe", "--since", str(since), "--until", str(result.resume_until), "--json")
    assert (code, rest["accepted"], rest["duplicate"]) == (0, 50, 1)  # the boundary second comes again


def test_an_event_read_back_that_would_re_point_a_customer_is_dead_lettered_not_a_crash(
    api_env: dict[str, str], redis: Redis
) -> None:
    settings = Settings.from_env(api_env)
    feeder = Feeder(settings, Store.from_settings(redis, settings), "stripe")
    owner = {"id": "cus_shared", "object": "customer", "email": "a@example.com", "metadata": {"user_id": "alice"}}
    other = {**owner, "metadata": {"user_id": "mallory"}}
    now = int(time.time())
    first = stripe_event("customer.updated", owner, event_id="evt_learn", created=now)
    second = stripe_event("customer.updated", other, event_id="evt_repoint", created=now)
    assert feeder.event(first) == "accepted"
    assert feeder.events_together([second]) == ["invalid"]
    [item] = feeder.store.dead_letters()
    assert (item["event_id"], item["reason"]) == ("evt_repoint", "identity_conflict")
    assert feeder.tally.counts["invalid"] == 1
    ledger = feeder.store.ledger()
    assert (ledger["received"], ledger["dead_lettered"]) == (2, 1)


def test_an_event_read_back_naming_no_one_is_counted_as_kept_not_accepted(
    api_env: dict[str, str], redis: Redis
) -> None:
    settings = Settings.from_env(api_env)
    feeder = Feeder(settings, Store.from_settings(redis, settings), "stripe")
    refund = {"id": "ch_1", "object": "charge", "amount_refunded": 500, "currency": "usd", "customer": None}
    event = stripe_event("charge.refunded", refund, event_id="evt_nobody", created=int(time.time()))
    assert feeder.event(event) == "invalid"
    assert feeder.event(event) == "duplicate"
    [item] = feeder.store.dead_letters()
    assert (item["event_id"], item["reason"]) == ("evt_nobody", "unresolved_identity")
    assert (feeder.tally.counts["invalid"], feeder.tally.counts["accepted"]) == (1, 0)


def test_updates_accepted_together_are_one_transaction_with_each_answer(api_env: dict[str, str], redis: Redis) -> None:
    store = Store.from_settings(redis, Settings.from_env(api_env))
    assert store.accept(an_update("evt_learn", user_id="alice", customer_id="cus_1"))
    answers = store.accept_together(
        [
            an_update("evt_a", user_id="bob", customer_id="cus_2"),
            an_update("evt_learn", user_id="alice", customer_id="cus_1"),  # a duplicate
            an_update("evt_b", user_id="mallory", customer_id="cus_1"),  # would re-point cus_1
            an_update("evt_c", user_id="bob", customer_id="cus_2"),
        ],
        lane=keys.BACKFILL,
    )
    assert answers[:2] == [True, False] and isinstance(answers[2], IdentityConflict) and answers[3] is True
    assert redis.llen(keys.USERCOM.rq_queue_key(keys.BACKFILL)) == 1  # bob, queued once


def test_more_types_than_stripe_filters_are_read_unfiltered_and_kept_by_the_reader(
    stripe_api: StripeApiServer,
) -> None:
    events = history(users=30, steps=2, start=int(time.time()) - 600)  # 90 events, 3 types
    for event in events:
        stripe_api.state.add_event(event)
    reader = StripeReader(API_KEY, stripe_api.base_url, max_rps=1000)
    kinds = sorted({e["type"] for e in events})
    few, many = kinds[:2], [*kinds[:2], *(f"invoice.type_{n}" for n in range(20))]  # 2 and 22 types
    since = int(time.time()) - 3600
    wanted = [e["id"] for e in reversed(events) if e["type"] in few]
    assert [e["id"] for page in reader.event_pages(since, None, few) for e in page] == wanted
    assert any(k.startswith("types[") for k in stripe_api.state.requests[-1]["args"])
    assert [e["id"] for page in reader.event_pages(since, None, many) for e in page] == wanted
    assert not any(k.startswith("types[") for k in stripe_api.state.requests[-1]["args"])  # Stripe's 400 otherwise
