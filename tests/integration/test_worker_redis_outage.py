"""A worker survives Redis going away in the middle of a job (workers/runner.py): rq's loop ends on
an error it does not handle, and the worker process with it, silently. A loaded test run showed it:
Redis restarted while a job did its bookkeeping, and the pod was left without live delivery."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue
from rq.job import JobStatus
from rq.serializers import JSONSerializer

from service.config import Settings
from service.devtools.embedded_redis import RedisProcess
from service.store import keys
from tests.ports import unused_port
from workers.runner import DeliveryWorker, run_worker, wait_for_redis

OUTAGE_SECONDS = 1.5
_server: list[RedisProcess] = []  # the Redis the job stops: the job runs in the worker's process


def stop_redis_once() -> str:
    """A job whose own work ends with Redis gone: rq's bookkeeping after it meets the outage."""
    if _server:
        server = _server.pop()
        server.stop()
        threading.Timer(OUTAGE_SECONDS, server.start).start()
    return "stopped"


def answer() -> str:
    return "taken after the outage"


def test_a_redis_outage_during_a_job_leaves_the_worker_taking_jobs(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path / "redis").start()
    redis = Redis.from_url(server.url)
    try:
        queue = Queue("outage", connection=redis, serializer=JSONSerializer)
        worker = DeliveryWorker([queue], connection=redis, serializer=JSONSerializer, maintenance_interval=1)
        worker.max_connection_wait_time = 0.5
        _server.append(server)
        queue.enqueue(stop_redis_once)
        after = queue.enqueue(answer)
        worker.work(burst=True, with_scheduler=False)  # until the queue is empty, or the loop gives up
        assert after.get_status() == JobStatus.FINISHED
        assert after.return_value() == "taken after the outage"
    finally:
        redis.close()
        server.stop()


def test_a_worker_whose_loop_gave_up_says_so_to_its_supervisor(
    settings: Settings, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rq's loop also ends on any error it does not handle (it logs it and returns). The process then
    exits non-zero (service/cli: `relay worker --lane`), so the supervisor stops the set and the
    orchestrator restarts it, rather than going on one worker short. A stop, or a burst that found
    the queue empty, is 0; a burst whose loop gave up is not (`relay worker --burst` fails)."""
    assert run_worker(settings, destination="usercom", burst=True) is True  # a burst done: the queue empty

    turns = 0

    def gives_up_after_a_job(self: DeliveryWorker, burst: bool) -> None:
        nonlocal turns
        turns += 1
        if turns > 1:
            raise RuntimeError("an error rq's loop does not handle")

    monkeypatch.setattr(DeliveryWorker, "check_for_suspension", gives_up_after_a_job)
    job = Queue(keys.USERCOM.queue_name(keys.LIVE), connection=redis, serializer=JSONSerializer).enqueue(answer)
    assert run_worker(settings, destination="usercom", burst=True) is False  # rq logged it and quit
    assert job.get_status() == JobStatus.FINISHED  # the queue was not found empty: the loop gave up
    monkeypatch.undo()
    stop_at_once = DeliveryWorker.bootstrap

    def bootstrap(self: DeliveryWorker, *args: Any, **kwargs: Any) -> None:
        stop_at_once(self, *args, **kwargs)
        self._stop_requested = True  # as SIGTERM, arriving before the loop's first turn

    monkeypatch.setattr(DeliveryWorker, "bootstrap", bootstrap)
    assert run_worker(settings, destination="usercom") is True  # stopped as asked


def test_waiting_for_an_unreachable_redis_backs_off_to_its_bound_and_ends_on_a_stop() -> None:
    """Inside a job the wait ends when the worker is told to stop (SIGTERM): with Redis down for good,
    the pod would otherwise wait for its SIGKILL."""
    nowhere = Redis(port=unused_port(), retry=Retry(NoBackoff(), 0))  # refused at once
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        assert len(slept) < 10, "the stop was not heeded"

    assert wait_for_redis(nowhere, sleep=sleep, max_delay=5, stopped=lambda: len(slept) >= 6) == 7
    assert slept == [1, 2, 4, 5, 5, 5]
