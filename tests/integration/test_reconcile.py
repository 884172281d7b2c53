"""`relay reconcile stripe` and RELAY_RECONCILE_INTERVAL: events Stripe holds that the relay never
received (answered 2xx but lost, or never sent) are found by id, reported and healed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis import Redis

from service.backfill import periodic
from service.backfill.events import read_window
from service.backfill.feed import Feeder
from service.backfill.readers import reader_for
from service.backfill.reconcile import reconcile
from service.cli import main
from service.config import Settings
from service.devtools.stripe_api import StripeApiServer
from service.store import keys
from service.store.ledger import Store
from tests.integration.test_backfill import run
from tests.stripe_history import history


def silent_gaps(stripe_api: StripeApiServer, post_event: Callable[..., Any], users: int) -> list[str]:
    """Stripe believes every event delivered; a third never reached the relay's store."""
    lost = []
    for n, event in enumerate(history(users=users, steps=2, start=int(time.time()) - 3600)):
        stripe_api.state.add_event(event)
        if n % 3 == 0:
            lost.append(event["id"])
        else:
            assert post_event(event).status_code == 202
    return lost


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"source": "stripe"}) or 0.0


def test_reconcile_reports_and_heals_what_never_arrived(
    api_env: dict[str, str],
    stripe_api: StripeApiServer,
    post_event: Callable[..., Any],
    client: Any,
    redis: Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lost = silent_gaps(stripe_api, post_event, users=5)
    missing_before = metric("relay_reconcile_missing_total")
    code, summary = run(capsys, "reconcile", "stripe", "--since", "2h", "--json")
    assert (code, summary["missing"], summary["healed"], summary["duplicate"]) == (
        0,
        len(lost),
        len(lost),
        2 * len(lost),
    )
    assert metric("relay_reconcile_missing_total") - missing_before == len(lost)
    # Each lost event is merged into its user's pending state: a user with nothing pending gets one
    # backfill job, one whose live job waits already is delivered by it (never one job per event).
    assert redis.llen(keys.USERCOM.rq_queue_key(keys.BACKFILL)) + redis.llen(keys.USERCOM.rq_queue_key(keys.LIVE)) > 0
    assert redis.llen(keys.USERCOM.rq_queue_key(keys.BACKFILL)) <= len(lost)
    status = client.get("/status").get_json()["reconcile"]["stripe"]
    assert (status["missing"], status["healed"]) == (len(lost), len(lost))
    assert sorted(status["missing_ids"]) == sorted(lost)
    assert status["at"].endswith("Z") and status["at_unix"] > status["since_unix"]  # ISO 8601, number beside
    code, again = run(capsys, "reconcile", "stripe", "--since", "2h", "--json")
    assert (code, again["missing"], again["healed"]) == (0, 0, 0)


def test_a_reconcile_stopped_before_it_feeds_leaves_its_missing_events_to_the_next_count(
    api_env: dict[str, str], stripe_api: StripeApiServer, post_event: Callable[..., Any], redis: Redis
) -> None:
    """relay_reconcile_missing_total counts each event never received once, though the run that found it first
    was stopped before feeding it (the worker stopping) and the next run finds it again."""
    lost = silent_gaps(stripe_api, post_event, users=5)
    settings = Settings.from_env(api_env)
    feeder = Feeder(settings, Store.from_settings(redis, settings), "stripe")
    window = read_window("2h", None, now=time.time())
    missing_before = metric("relay_reconcile_missing_total")
    stopped = threading.Event()
    stopped.set()  # seen after the first page is read: nothing is fed
    types = sorted(settings.mapping.rules["stripe"])
    first = reconcile(reader_for("stripe", settings), feeder, redis, window, types, stop=stopped)
    assert first["interrupted"] and first["missing"] > 0 and first["healed"] == 0
    assert metric("relay_reconcile_missing_total") == missing_before
    feeder = Feeder(settings, Store.from_settings(redis, settings), "stripe")
    second = reconcile(reader_for("stripe", settings), feeder, redis, window, types)
    assert not second["interrupted"] and second["missing"] == second["healed"] == len(lost)
    assert metric("relay_reconcile_missing_total") - missing_before == len(lost)


def test_a_window_past_the_dedup_memory_is_refused(api_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reconcile", "stripe", "--since", "30d"]) == 2
    assert "RELAY_DEDUP_TTL_SECONDS" in capsys.readouterr().err


def test_periodic_reconcile_runs_once_per_interval_cluster_wide(
    api_env: dict[str, str], stripe_api: StripeApiServer, post_event: Callable[..., Any], redis: Redis
) -> None:
    lost = silent_gaps(stripe_api, post_event, users=4)
    settings = Settings.from_env({**api_env, "RELAY_RECONCILE_INTERVAL": "3600"})
    first = periodic.run_once(settings, redis)
    assert first is not None and (first["missing"], first["healed"]) == (len(lost), len(lost))
    assert periodic.run_once(settings, redis) is None  # another worker (or this one) ran this interval
    first_record = periodic.last_run(redis, "stripe")
    assert first_record is not None
    redis.delete(keys.reconcile_lock("stripe"))
    second = periodic.run_once(settings, redis, now=time.time() + 60)
    assert second is not None and second["missing"] == 0
    # The next window starts where the last ended (less the grace overlap), not two intervals back.
    record = periodic.last_run(redis, "stripe")
    assert record is not None and record["since"] == first_record["until"] - periodic.GRACE_SECONDS


def test_a_manual_reconcile_with_an_until_ahead_leaves_no_gap_for_the_periodic_one(
    api_env: dict[str, str], stripe_api: StripeApiServer, redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """The run's record says what it covered (up to when it read), so the next periodic window starts
    there, not at the --until asked for: a window from the future reads nothing."""
    code, _ = run(capsys, "reconcile", "stripe", "--since", "2h", "--until", str(int(time.time()) + 3600), "--json")
    ran_at = time.time()
    record = periodic.last_run(redis, "stripe")
    assert code == 0 and record is not None and record["until"] <= ran_at
    settings = Settings.from_env({**api_env, "RELAY_RECONCILE_INTERVAL": "600"})
    window = periodic.window_for(redis, settings, ran_at + 600)
    assert window.until is not None and window.since <= ran_at - periodic.GRACE_SECONDS < window.until


def test_periodic_reconcile_is_off_by_default_and_needs_a_key(env: dict[str, str]) -> None:
    assert periodic.start(Settings.from_env(env)) is None
    assert periodic.start(Settings.from_env({**env, "RELAY_RECONCILE_INTERVAL": "600"})) is None
