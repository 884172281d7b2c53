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
