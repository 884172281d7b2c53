"""One rq job runs the delivery jobs queued behind it (workers/delivery/batch.py): nothing lost when its
worker dies, nothing run twice, throttling stops the taking."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis
from rq import SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer

from service.config import Settings
from service.devtools.usercom_sandbox import SandboxServer
from service.store import keys
from service.store.jobs import delivery_job, job_id_for
from tests.conftest import an_update
from workers.delivery.batch import BATCH_MAX_JOBS, BATCH_SECONDS, BATCH_THREADS, batch_key, return_taken, run_batch
from workers.delivery.context import DeliveryContext, configure
from workers.delivery.job import on_job_failure
from workers.ratelimit import RateLimiter
from workers.runner import build_context, limit_config

LIVE_QUEUE = keys.USERCOM.rq_queue_key(keys.LIVE)


@pytest.fixture
def ctx(settings: Settings, redis: Redis, sandbox: SandboxServer) -> Iterator[DeliveryContext]:
    sandbox.state.seed([f"u{n}" for n in range(BATCH_MAX_JOBS + 10)])
    context = build_context(settings, "usercom")
    configure(context)
    yield context
    context.redis.close()


def one_job(ctx: DeliveryContext) -> None:
    SimpleWorker([ctx.queues[keys.LIVE]], connection=ctx.redis, serializer=JSONSerializer).work(burst=True, max_jobs=1)


def test_one_job_runs_the_jobs_queued_behind_it(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    for n in range(BATCH_MAX_JOBS + 5):
        assert ctx.store.accept(an_update(f"evt_{n}", user_id=f"u{n}"))
    one_job(ctx)  # rq runs one job; it takes the next BATCH_MAX_JOBS
    assert ctx.redis.llen(LIVE_QUEUE) == 4
    assert ctx.store.ledger()["delivered"] == BATCH_MAX_JOBS + 1
    assert not ctx.redis.exists(keys.RQ_JOB_KEY_PREFIX + "stripe-evt_1")  # finished, not kept
    assert ctx.redis.keys("relay:batch:*") == []
    one_job(ctx)
    ledger = ctx.store.ledger()
    assert (ledger["delivered"], ledger["in_flight"]) == (BATCH_MAX_JOBS + 5, 0)
    puts = [r for r in sandbox.state.requests if r["method"] == "PUT"]
    assert len(puts) == BATCH_MAX_JOBS + 5  # each once


def test_jobs_taken_by_a_job_whose_worker_died_are_run_by_its_rerun(
    ctx: DeliveryContext, sandbox: SandboxServer
) -> None:
    for n in range(3):
        assert ctx.store.accept(an_update(f"evt_{n}", user_id=f"u{n}"))
    # As if the worker running evt_0 had taken evt_1 and evt_2 and then died: rq reruns evt_0.
    for _ in (1, 2):
        ctx.redis.lmove(LIVE_QUEUE, batch_key(keys.USERCOM, "stripe-evt_0"), "RIGHT", "LEFT")
    assert ctx.redis.lrange(LIVE_QUEUE, 0, -1) == [b"stripe-evt_0"]
    one_job(ctx)
    ledger = ctx.store.ledger()
    assert (ledger["delivered"], ledger["in_flight"]) == (3, 0)
    assert ctx.redis.keys("relay:batch:*") == []


def test_after_the_last_rerun_taken_jobs_go_back_to_the_queue(ctx: DeliveryContext) -> None:
    for n in range(3):
        assert ctx.store.accept(an_update(f"evt_{n}", user_id=f"u{n}"))
    carrier = Job.fetch("stripe-evt_0", connection=ctx.redis, serializer=JSONSerializer)
    for _ in (1, 2):
        ctx.redis.lmove(LIVE_QUEUE, batch_key(keys.USERCOM, carrier.id), "RIGHT", "LEFT")
    carrier.retries_left = 0
    on_job_failure(carrier, ctx.redis, RuntimeError, RuntimeError("boom"), None)
    assert sorted(ctx.redis.lrange(LIVE_QUEUE, 0, -1)) == [b"stripe-evt_0", b"stripe-evt_1", b"stripe-evt_2"]
    assert return_taken(ctx.redis, keys.USERCOM, keys.LIVE, carrier.id) == 0


def test_throttling_stops_the_taking(ctx: DeliveryContext, settings: Settings) -> None:
    for n in range(5):
        assert ctx.store.accept(an_update(f"evt_{n}", user_id=f"u{n}"))
    RateLimiter(ctx.redis, limit_config(settings, "usercom"), destination_keys=keys.USERCOM).pause(30)
    one_job(ctx)
    assert ctx.redis.llen(LIVE_QUEUE) == 4  # the throttled job was put back; nothing else taken
    assert ctx.store.ledger()["in_flight"] == 5


def test_jobs_rq_wrote_itself_are_taken_too(ctx: DeliveryContext) -> None:
    """Retries and put-backs are made by rq (zlib-compressed data); intake writes its own."""
    first, second = an_update("evt_a", user_id="u1"), an_update("evt_b", user_id="u2")
    assert ctx.store.accept(first)
    assert ctx.store.accept(second)
    ctx.redis.delete(LIVE_QUEUE)
    retry = delivery_job(ctx.redis, second, 2, 1.0, destination_keys=keys.USERCOM)
    ctx.queues[keys.LIVE].enqueue_job(delivery_job(ctx.redis, first, destination_keys=keys.USERCOM))
    ctx.queues[keys.LIVE].enqueue_job(retry)
    assert retry.id == job_id_for(second, 2, destination="usercom")
    one_job(ctx)
    ledger = ctx.store.ledger()
    assert (ledger["delivered"], ledger["in_flight"]) == (2, 0)
    assert ctx.redis.llen(LIVE_QUEUE) == 0


def test_a_requeued_job_taken_by_another_gives_back_what_it_held(ctx: DeliveryContext) -> None:
    for n in range(3):
        assert ctx.store.accept(an_update(f"evt_{n}", user_id=f"u{n}"))
    # evt_1's worker died holding evt_2; rq re-queued evt_1 behind evt_0; evt_0's job takes evt_1.
    ctx.redis.lmove(LIVE_QUEUE, batch_key(keys.USERCOM, "stripe-evt_1"), "RIGHT", "LEFT")
    one_job(ctx)
    ledger = ctx.store.ledger()
    assert (ledger["delivered"], ledger["in_flight"]) == (3, 0)
    assert ctx.redis.keys("relay:batch:*") == []


def test_a_job_failing_after_its_event_was_settled_is_not_dead_lettered(ctx: DeliveryContext) -> None:
    """rq can fail a finished job (e.g. cleaning up after a killed run); the event stays delivered."""
    assert ctx.store.accept(an_update("evt_0", user_id="u0"))
    one_job(ctx)
    ctx.queues[keys.LIVE].enqueue_job(
        delivery_job(ctx.redis, an_update("evt_0", user_id="u0"), destination_keys=keys.USERCOM)
    )
    job = Job.fetch("stripe-evt_0", connection=ctx.redis, serializer=JSONSerializer)
    job.retries_left = 0
    on_job_failure(job, ctx.redis, ValueError, ValueError("Execution not found in Redis"), None)
    assert ctx.store.dead_letters() == []
    ledger = ctx.store.ledger()
    assert (ledger["delivered"], ledger["dead_lettered"], ledger["in_flight"]) == (1, 0, 0)


def test_a_job_that_ran_long_takes_no_more(ctx: DeliveryContext) -> None:
    for n in range(3):
        assert ctx.store.accept(an_update(f"evt_{n}", user_id=f"u{n}"))
    ran: list[str] = []

    def run(job_id: str, args: list[Any]) -> str:
        ran.append(job_id)
        return "delivered"

    late = time.monotonic() - BATCH_SECONDS  # the taking job began this long ago
    assert run_batch(ctx.redis, keys.USERCOM, keys.LIVE, "x", run, started=late) == 0
    assert ran == [] and ctx.redis.llen(LIVE_QUEUE) == 3
    assert run_batch(ctx.redis, keys.USERCOM, keys.LIVE, "x", run, started=time.monotonic()) == 3
    assert sorted(ran) == ["stripe-evt_0", "stripe-evt_1", "stripe-evt_2"]  # on several threads: any order


def test_a_batch_runs_its_jobs_side_by_side(ctx: DeliveryContext) -> None:
    """While one taken job waits (for Redis, for the API), others run: each of these waits until
    all are running at once, so run one after another they would all fail."""
    assert BATCH_THREADS >= 2
    for n in range(BATCH_THREADS):
        assert ctx.store.accept(an_update(f"evt_{n}", user_id=f"u{n}"))
    together = threading.Barrier(BATCH_THREADS, timeout=5)

    def run(job_id: str, args: list[Any]) -> str:
        together.wait()
        return "delivered"

    assert run_batch(ctx.redis, keys.USERCOM, keys.LIVE, "x", run, started=time.monotonic()) == BATCH_THREADS
    assert ctx.redis.llen(LIVE_QUEUE) == 0 and ctx.redis.keys("relay:batch:*") == []
