"""RELAY_MAINTENANCE_INTERVAL_SECONDS reaches each worker process: its maintenance passes, and its
idle wait for a job (so an idle worker still runs maintenance that often)."""

from __future__ import annotations

from typing import Any

import pytest
from redis import Redis

from service.config import Settings
from service.store import keys
from workers import runner


@pytest.mark.parametrize(("configured", "expected"), [(None, runner.MAINTENANCE_INTERVAL_SECONDS), ("2", 2)])
def test_each_worker_runs_maintenance_as_often_as_configured(
    env: dict[str, str], redis: Redis, monkeypatch: pytest.MonkeyPatch, configured: str | None, expected: int
) -> None:
    seen: list[tuple[int, int]] = []

    def work(self: runner.DeliveryWorker, **_: Any) -> bool:
        seen.append((self.maintenance_interval, self.dequeue_timeout))
        return False

    monkeypatch.setattr(runner.DeliveryWorker, "work", work)
    monkeypatch.setattr(runner, "forks_die_with_this_process", lambda: None)  # no fork handler left in pytest
    extra = {} if configured is None else {"RELAY_MAINTENANCE_INTERVAL_SECONDS": configured}
    settings = Settings.from_env({**env, **extra})
    runner.run_worker(settings, lane=keys.LIVE, destination="usercom", burst=True)
    assert seen == [(expected, expected)]


def test_the_cleaning_lock_a_killed_worker_leaves_lapses_within_two_intervals(settings: Settings, redis: Redis) -> None:
    """A worker SIGKILLed while cleaning keeps everyone from re-running dead workers' jobs until its
    lock lapses: within two maintenance intervals, not rq's 15 minutes (nor the minute it was here)."""
    queue = runner.build_context(settings, "usercom").queues[keys.LIVE]
    assert queue.acquire_maintenance_lock()  # and never released: its worker is killed now
    assert not queue.acquire_maintenance_lock()
    assert 0 < redis.ttl(queue.registry_cleaning_key) <= 2 * runner.MAINTENANCE_INTERVAL_SECONDS
