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

import workers.delivery.batch
from service.config import Settings
from service.devtools.usercom_sandbox import SandboxServer
from service.store import keys
from service.store.jobs import delivery_job
from service.store.ledger_state import source_and_hint
from tests.conftest import an_update
from workers.delivery.batch import (
    BATCH_SECONDS,
    BATCH_THREADS,
    _Batch,
    batch_key,
    return_taken,
    run_batch,
)
from workers.delivery.context import DeliveryContext, configure
from workers.delivery.job import on_job_failure
from workers.ratelimit import RateLimiter
from workers.runner import build_context, limit_config

LIVE_QUEUE = keys.USERCOM.rq_queue_key(keys.LIVE)


@pytest.fixture
def ctx(settings: Settings, redis: Redis, sandbox: SandboxServer) -> Iterator[DeliveryContext]:
    sandbox.state.seed([f"u{n}" for n in range(50)])
    context = build_context(settings, "usercom")
    configure(context)
    yield context
    context.redis.close()


def queued(ctx: DeliveryContext) -> list[str]:
    """The ids of the jobs queued, oldest first (one per user: each id is random)."""
    return [raw.decode() for raw in ctx.redis.lrange(LIVE_QUEUE, 0, -1)]


def one_job(ctx: DeliveryContext) -> None:
    SimpleWorker([ctx.queues[keys.LIVE]], connection=ctx.redis, serializer=JSONSerializer).work(burst=True, max_jobs=1)


def test_one_job_runs_the_jobs_queued_behind_it(
    ctx: DeliveryContext, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = 40  # BATCH_MAX_JOBS, smaller: the same behaviour with fewer deliveries
    monkeypatch.setattr(workers.delivery.batch, "BATCH_MAX_JOBS", cap)
    for n in range(cap + 5):
        assert ctx.store.accept(an_update(f"evt_{n}", user_id=f"u{n}"))
    ids = queued(ctx)
    one_job(ctx)  # rq runs one job; it takes the next `cap`
    assert queued(ctx) == ids[cap + 1 :]
    assert ctx.store.ledger()["delivered"] == cap + 1
    assert not ctx.redis.exists(keys.RQ_JOB_KEY_PREFIX + ids[1])  # finished, not kept
    assert ctx.redis.keys("relay:batch:*") == []
    one_job(ctx)
    ledger = ctx.store.ledger()
    assert (ledger["delivered"], ledger["in_flight"]) == (cap + 5, 0)
    puts = [r for r in sandbox.state.requests if r["method"] == "PUT"]
    assert len(puts) == cap + 5  # each once


def test_jobs_taken_by_a_job_whose_worker_died_are_run_by_its_rerun(
    ctx: DeliveryContext, sandbox: SandboxServer
) -> None:
    for n in range(3):
        assert ctx.store.accept(an_update(f"evt_{n}", user_id=f"u{n}"))
    carrier = queued(ctx)[0]
    # As if the worker running u0's job had taken u1's and u2's and then died: rq reruns u0's.
    for _ in (1, 2):
        ctx.redis.lmove(LIVE_QUEUE, batch_key(keys.USERCOM, carrier), "RIGHT", "LEFT")
    assert queued(ctx) == [carrier]
    one_job(ctx)
    ledger = ctx.store.ledger()
    assert (ledger["delivered"], ledger["in_flight"]) == (3, 0)
    assert ctx.redis.keys("relay:batch:*") == []


def test_a_rerun_throttled_gives_back_what_its_killed_run_had_taken(ctx: DeliveryContext, settings: Settings) -> None:
    """The rerun of a carrier finds the destination paused: its own user waits for a slot, and the jobs
    its killed run had taken go back to the queue, not left in a list no job reads again."""
    for n in range(3):
        assert ctx.store.accept(an_update(f"evt_{n}", user_id=f"u{n}"))
    carrier, *taken = queued(ctx)
    for _ in taken:
        ctx.redis.lmove(LIVE_QUEUE, batch_key(keys.USERCOM, carrier), "RIGHT", "LEFT")
    limiter = RateLimiter(ctx.redis, limit_config(settings, "usercom"), destination_keys=keys.USERCOM)
    limiter.pause(30)
    one_job(ctx)
    assert queued(ctx) == taken
    assert ctx.redis.keys("relay:batch:*") == []
    ctx.redis.delete(keys.USERCOM.limiter_paused_until)
    one_job(ctx)
    ledger = ctx.store.ledger()
    assert (ledger["delivered"], ledger["in_flight"]) == (2, 1)  # u0 waits for its put-back job


@pytest.mark.parametrize("stop", ["throttled", "time up"])
def test_a_rerun_hands_back_what_it_cannot_finish(ctx: DeliveryContext, stop: str) -> None:
    """Handling what a killed run had taken stops at a throttled job, or once the batch's time is up
    (every call of the API timing out would otherwise outlast rq's job timeout): the rest is queued."""
    for n in range(4):
        assert ctx.store.accept(an_update(f"evt_{n}", user_id=f"u{n}"))
    ids = queued(ctx)
    for _ in ids:
        ctx.redis.lmove(LIVE_QUEUE, batch_key(keys.USERCOM, "x"), "LEFT", "RIGHT")
    now = [0.0]
    ran: list[str] = []

    def run(job_id: str, args: list[Any], hint: bytes | None) -> str:
        ran.append(job_id)
        if stop == "time up":
            now[0] += BATCH_SECONDS
            return "delivered"
        return "throttled"

    assert run_batch(ctx.redis, keys.USERCOM, keys.LIVE, "x", run, started=0.0, clock=lambda: now[0]) == 1
    assert ran == ids[:1]
    assert queued(ctx) == ids[1:]  # in their order, at the head of the queue
    assert ctx.redis.keys("relay:batch:*") == []


@pytest.mark.parametrize("lane", keys.LANES)
def test_after_the_last_rerun_taken_jobs_go_back_to_their_queue(ctx: DeliveryContext, lane: str) -> None:
    """To the carrier's own lane: a backfill carrier's jobs went to the live queue, ahead of live users."""
    queue = keys.USERCOM.rq_queue_key(lane)
    for n in range(3):
        assert ctx.store.accept(an_update(f"evt_{n}", user_id=f"u{n}"), lane=lane)
    ids = [raw.decode() for raw in ctx.redis.lrange(queue, 0, -1)]
    carrier = Job.fetch(ids[0], connection=ctx.redis, serializer=JSONSerializer)
    for _ in (1, 2):
        ctx.redis.lmove(queue, batch_key(keys.USERCOM, carrier.id), "RIGHT", "LEFT")
    carrier.retries_left = 0
    on_job_failure(carrier, ctx.redis, RuntimeError, RuntimeError("boom"), None)
    assert sorted(raw.decode() for raw in ctx.redis.lrange(queue, 0, -1)) == sorted(ids)
    assert return_taken(ctx.redis, keys.USERCOM, lane, carrier.id) == 0


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
    first_id, second_id = queued(ctx)
    ctx.redis.delete(LIVE_QUEUE)
    retry = delivery_job(
        ctx.redis, "stripe", "user:u2", 2, 1.0, job_id=f"{second_id}-a2", destination_keys=keys.USERCOM
    )
    own = delivery_job(ctx.redis, "stripe", "user:u1", job_id=first_id, destination_keys=keys.USERCOM)
    ctx.queues[keys.LIVE].enqueue_job(own)
    ctx.queues[keys.LIVE].enqueue_job(retry)
    one_job(ctx)
    ledger = ctx.store.ledger()
    assert (ledger["delivered"], ledger["in_flight"]) == (2, 0)
    assert ctx.redis.llen(LIVE_QUEUE) == 0


def test_a_requeued_job_taken_by_another_gives_back_what_it_held(ctx: DeliveryContext) -> None:
    for n in range(3):
        assert ctx.store.accept(an_update(f"evt_{n}", user_id=f"u{n}"))
    second = queued(ctx)[1]
    # u1's worker died holding u2's job; rq re-queued u1's behind u0's; u0's job takes u1's.
    ctx.redis.lmove(LIVE_QUEUE, batch_key(keys.USERCOM, second), "RIGHT", "LEFT")
    one_job(ctx)
    ledger = ctx.store.ledger()
    assert (ledger["delivered"], ledger["in_flight"]) == (3, 0)
    assert ctx.redis.keys("relay:batch:*") == []


def test_a_job_failing_after_its_event_was_settled_is_not_dead_lettered(ctx: DeliveryContext) -> None:
    """rq can fail a finished job (e.g. cleaning up after a killed run); the event stays delivered."""
    assert ctx.store.accept(an_update("evt_0", user_id="u0"))
    [job_id] = queued(ctx)
    one_job(ctx)
    ctx.queues[keys.LIVE].enqueue_job(
        delivery_job(ctx.redis, "stripe", "user:u0", job_id=job_id, destination_keys=keys.USERCOM)
    )
    job = Job.fetch(job_id, connection=ctx.redis, serializer=JSONSerializer)
    job.retries_left = 0
    on_job_failure(job, ctx.redis, ValueError, ValueError("Execution not found in Redis"), None)
    assert ctx.store.dead_letters() == []
    ledger = ctx.store.ledger()
    assert (ledger["delivered"], ledger["dead_lettered"], ledger["in_flight"]) == (1, 0, 0)


def test_a_job_that_ran_long_takes_no_more(ctx: DeliveryContext) -> None:
    for n in range(3):
        assert ctx.store.accept(an_update(f"evt_{n}", user_id=f"u{n}"))
    ids = queued(ctx)
    ran: list[str] = []

    def run(job_id: str, args: list[Any], hint: bytes | None) -> str:
        ran.append(job_id)
        return "delivered"

    late = time.monotonic() - BATCH_SECONDS  # the taking job began this long ago
    assert run_batch(ctx.redis, keys.USERCOM, keys.LIVE, "x", run, started=late) == 0
    assert ran == [] and ctx.redis.llen(LIVE_QUEUE) == 3
    assert run_batch(ctx.redis, keys.USERCOM, keys.LIVE, "x", run, started=time.monotonic()) == 3
    assert sorted(ran) == sorted(ids)  # on several threads: any order


def test_a_batch_runs_its_jobs_side_by_side(ctx: DeliveryContext) -> None:
    """While one taken job waits (for Redis, for the API), others run: each of these waits until
    all are running at once, so run one after another they would all fail."""
    assert BATCH_THREADS >= 2
    for n in range(BATCH_THREADS):
        assert ctx.store.accept(an_update(f"evt_{n}", user_id=f"u{n}"))
    together = threading.Barrier(BATCH_THREADS, timeout=5)

    def run(job_id: str, args: list[Any], hint: bytes | None) -> str:
        together.wait()
        return "delivered"

    assert run_batch(ctx.redis, keys.USERCOM, keys.LIVE, "x", run, started=time.monotonic()) == BATCH_THREADS
    assert ctx.redis.llen(LIVE_QUEUE) == 0 and ctx.redis.keys("relay:batch:*") == []


def test_taking_a_users_job_reads_whose_it_is_in_the_same_step(ctx: DeliveryContext) -> None:
    """A job intake wrote comes with its user's hint (no round trip to find it); one rq wrote
    (compressed) comes without, and is delivered all the same."""
    assert ctx.store.accept(an_update("evt_a", user_id="u1"))
    [intake_id] = queued(ctx)
    ctx.redis.delete(LIVE_QUEUE)
    retry = delivery_job(
        ctx.redis, "stripe", "user:u1", 2, 1.0, job_id=f"{intake_id}-a2", destination_keys=keys.USERCOM
    )
    ctx.redis.rpush(LIVE_QUEUE, intake_id)
    ctx.queues[keys.LIVE].enqueue_job(retry)
    batch = _Batch(ctx.redis, keys.USERCOM, keys.LIVE, "x")
    first, second = batch.next(finished=[], take=2, spread=1)
    assert (first[0], source_and_hint(first[2])) == (intake_id, ("stripe", "user:u1"))
    assert (second[0], second[2]) == (retry.id, None)
    return_taken(ctx.redis, keys.USERCOM, keys.LIVE, "x")
    one_job(ctx)
    assert ctx.store.ledger()["delivered"] == 1 and ctx.store.ledger()["in_flight"] == 0
