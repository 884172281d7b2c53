"""Several users delivered together (workers/delivery/group.py): each user's guarantees hold as if it
were delivered alone: a refused value dead-letters only its carrier events, a busy user waits for its
lease, a worker killed midway loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from rq.registry import StartedJobRegistry

import workers.delivery.group
import workers.delivery.job
import workers.ratelimit
from service.config import Settings
from service.devtools.usercom_sandbox import Fault, SandboxServer
from service.store import keys
from service.store.jobs import JOB_END_SECONDS
from service.store.ledger import Store
from service.store.ledger_state import source_and_hint
from tests.conftest import an_update
from tests.integration.test_recovery import RELAY
from tests.ports import unused_port
from workers.delivery.batch import BATCH_THREADS, _Batch, _call_of
from workers.delivery.context import DeliveryContext, calls_until, configure
from workers.delivery.group import deliver_group
from workers.delivery.job import deliver_user
from workers.heartbeat import HEARTBEAT_TTL_SECONDS
from workers.ordering import Hold
from workers.runner import build_context, run_worker

USERS = [f"u{n}" for n in range(12)]


@pytest.fixture
def ctx(settings: Settings, redis: Redis, sandbox: SandboxServer) -> Iterator[DeliveryContext]:
    sandbox.state.seed(USERS)
    context = build_context(settings, "usercom")
    configure(context)
    yield context
    context.redis.close()


def take_all(ctx: DeliveryContext) -> list[tuple[str, list[Any], bytes]]:
    """Every queued job, taken as a batch thread takes them: (id, rq arguments, user's hint field)."""
    batch = _Batch(ctx.redis, keys.USERCOM, keys.LIVE, "carrier")
    taken = batch.next(finished=[], take=100, spread=1)
    jobs = []
    for job_id, data, hint in taken:
        assert hint is not None
        jobs.append((job_id, _call_of(data)[2], hint))
    return jobs


def test_no_call_is_made_on_a_lease_that_may_have_lapsed(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    """The worker is paused (as by SIGSTOP) during the group's first call, for longer than its leases
    are known to run: another job may have taken the second user and sent newer values since, so its
    (older) update is not sent; it is put back, and sent by the next job that holds the user."""
    for user in ("u0", "u1"):
        assert ctx.store.accept(an_update(f"evt_{user}", user_id=user))
    resumed = [False]

    def api_calls() -> int:
        return sum(1 for r in sandbox.state.requests if r["path"].startswith("/api/public/"))

    # The clock jumps 10 s once the first call reached User.com: the pause, as the process sees it.
    ctx.ordering.renewer.clock = lambda: time.monotonic() + (10.0 if api_calls() and not resumed[0] else 0.0)
    ctx.ordering.renewer.interval = 3600  # no renewal in between: it would find the leases still ours
    jobs = take_all(ctx)
    assert deliver_group(ctx, jobs) == ["delivered", "user_busy"]
    assert api_calls() == 1
    assert sandbox.state.user_by_custom_id("u1")["attributes"] == {}  # type: ignore[index]
    assert ctx.store.ledger()["in_flight"] == 1  # u1's event, in hand
    resumed[0] = True
    source, hint = source_and_hint(jobs[1][2])  # type: ignore[misc]
    assert deliver_user(ctx, source, hint) == "delivered"
    assert sandbox.state.user_by_custom_id("u1")["attributes"] == {"plan": "pro"}  # type: ignore[index]
    assert ctx.store.ledger()["in_flight"] == 0


def test_no_call_is_made_that_could_outlast_its_job(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    """rq would kill the job mid-call and run it again (the update sent twice): a call whose timeouts (3 + 10 s)
    do not fit in what is left of the job is not made; its user is put back for the next job."""
    for user in ("u0", "u1"):
        assert ctx.store.accept(an_update(f"evt_{user}", user_id=user))
    jobs = take_all(ctx)
    with calls_until(time.monotonic() + 12):
        assert deliver_group(ctx, jobs) == ["deferred", "deferred"]
    assert not [r for r in sandbox.state.requests if r["path"].startswith("/api/public/")]
    assert ctx.store.ledger()["in_flight"] == 2
    with calls_until(time.monotonic() + 14):
        source, hint = source_and_hint(jobs[0][2])  # type: ignore[misc]
        assert deliver_user(ctx, source, hint) == "delivered"


def test_a_delivery_job_gives_its_calls_its_own_time(
    ctx: DeliveryContext, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job entry point sets the deadline its calls must end by (rq's timeout, less the time to count)."""
    assert ctx.store.accept(an_update("evt_u0", user_id="u0"))
    [(_, args, _)] = take_all(ctx)
    monkeypatch.setattr(workers.delivery.job, "DELIVERY_JOB_TIMEOUT", JOB_END_SECONDS + 12)  # 12 s: not 3 + 10
    assert workers.delivery.job.deliver(*args) == "deferred"
    monkeypatch.setattr(workers.delivery.job, "DELIVERY_JOB_TIMEOUT", JOB_END_SECONDS + 14)
    assert workers.delivery.job.deliver(*args) == "delivered"


def test_a_value_refused_in_a_group_dead_letters_only_its_carrier_events(
    ctx: DeliveryContext, sandbox: SandboxServer
) -> None:
    assert ctx.store.accept(an_update("evt_a", user_id="u0"))
    assert ctx.store.accept(
        an_update("evt_bad", user_id="u1", standard={"company_id": "co_missing"}, custom={}, tags=[])
    )
    assert ctx.store.accept(an_update("evt_good", user_id="u1", custom={"seats": 3}, tags=[]))
    assert ctx.store.accept(an_update("evt_c", user_id="u2"))
    jobs = take_all(ctx)
    assert len(jobs) == 3
    assert deliver_group(ctx, jobs) == ["delivered", "delivered", "delivered"]
    [item] = ctx.store.dead_letters()
    assert (item["event_id"], item["reason"]) == ("evt_bad", "usercom_rejected")
    for user in ("u0", "u2"):
        delivered = sandbox.state.user_by_custom_id(user)
        assert delivered is not None and delivered["attributes"] == {"plan": "pro"}
    u1 = sandbox.state.user_by_custom_id("u1")
    assert u1 is not None and u1["attributes"] == {"seats": 3} and u1["gender"] == "unknown"
    ledger = ctx.store.ledger()
    assert (ledger["delivered"], ledger["dead_lettered"], ledger["in_flight"]) == (3, 1, 0)
    assert ctx.redis.zcard(keys.USERCOM.limiter_in_flight) == 0  # every call's slot released
    assert ctx.redis.keys("relay:user-lock:*") == []


def test_a_group_books_its_users_calls_with_the_first(
    ctx: DeliveryContext, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # workers/ratelimit.py: a run. The first call's slot comes with the claims; the others' with it
    # (fresh for the whole test: a busy machine may take longer than a worker would).
    monkeypatch.setattr(workers.ratelimit, "RUN_FRESH_SECONDS", 60.0)
    acquire = ctx.limiter._acquire

    class Counted:
        sha, calls = acquire.sha, 0

        def __call__(self, **kwargs: Any) -> Any:
            self.calls += 1
            return acquire(**kwargs)

    counted = ctx.limiter._acquire = Counted()  # type: ignore[assignment]
    ctx.redis.script_load(acquire.script)  # else the booking's first run loads it through the wrapper
    for user in USERS[:6]:
        assert ctx.store.accept(an_update(f"evt_{user}", user_id=user))
    assert deliver_group(ctx, take_all(ctx)) == ["delivered"] * 6
    assert counted.calls == 0  # no call booked a slot of its own
    assert ctx.redis.zcard(keys.USERCOM.limiter_window) == 6 == len(sandbox.state.requests)
    assert ctx.redis.zcard(keys.USERCOM.limiter_in_flight) == 0


def test_a_user_another_job_holds_is_put_back_and_the_others_delivered(
    ctx: DeliveryContext, sandbox: SandboxServer
) -> None:
    for user in ("u0", "u1", "u2"):
        assert ctx.store.accept(an_update(f"evt_{user}", user_id=user))
    jobs = take_all(ctx)
    lock = keys.USERCOM.user_lock("u1")
    ctx.redis.set(lock, "another-job", px=60_000)
    assert deliver_group(ctx, jobs) == ["delivered", "user_busy", "delivered"]
    assert sandbox.state.user_by_custom_id("u1")["attributes"] == {}  # type: ignore[index]
    assert ctx.store.ledger()["in_flight"] == 1  # u1's update waits for its put-back job
    ctx.redis.delete(lock)
    assert len(ctx.queues[keys.LIVE].scheduled_job_registry.get_job_ids()) == 1


def test_users_whose_call_would_start_past_the_groups_time_are_put_back_with_their_updates(
    ctx: DeliveryContext, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An API slow on every call must not hold a group (and its carrier job) for each user's timeouts
    in turn: once the group has run GROUP_SEND_SECONDS, the users not called yet are put back."""
    monkeypatch.setattr(workers.delivery.group, "GROUP_SEND_SECONDS", 0.3)
    for user in ("u0", "u1", "u2"):
        assert ctx.store.accept(an_update(f"evt_{user}", user_id=user))
    jobs = take_all(ctx)
    sandbox.state.faults.append(Fault(0, delay=0.6))  # the first call answers, late
    assert deliver_group(ctx, jobs) == ["delivered", "deferred", "deferred"]
    assert [r["method"] for r in sandbox.state.requests].count("PUT") == 1
    assert ctx.store.ledger()["in_flight"] == 2  # their updates wait, in hand, for the put-back jobs
    queue = ctx.queues[keys.LIVE]
    assert len(queue.scheduled_job_registry.get_job_ids()) == 2
    for job_id in queue.scheduled_job_registry.get_job_ids():  # their time has come (fast-forwarded)
        job = queue.fetch_job(job_id)
        queue.scheduled_job_registry.remove(job)
        queue.enqueue_job(job)
    run_worker(ctx.settings, lane=keys.LIVE, destination="usercom", burst=True)
    for user in ("u1", "u2"):
        assert sandbox.state.user_by_custom_id(user)["attributes"] == {"plan": "pro"}  # type: ignore[index]
    assert ctx.store.ledger()["in_flight"] == 0


def test_the_same_user_twice_in_a_group_is_delivered_once(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    assert ctx.store.accept(an_update("evt_1", user_id="u0"))
    [job] = take_all(ctx)
    assert deliver_group(ctx, [job, (f"{job[0]}-a2", job[1], job[2])]) == ["delivered", "settled"]
    puts = [r for r in sandbox.state.requests if r["method"] == "PUT"]
    assert len(puts) == 1
    assert ctx.store.ledger()["delivered"] == 1 and ctx.store.ledger()["in_flight"] == 0


def test_a_worker_killed_amid_its_groups_loses_none_of_their_users(
    env: dict[str, str], settings: Settings, redis: Redis, sandbox: SandboxServer
) -> None:
    sandbox.state.seed(USERS)
    store = Store.from_settings(redis, settings)
    for n, user in enumerate(USERS):
        assert store.accept(an_update(f"evt_{n}", user_id=user))
    # The carrier's own user answers, then each batch thread takes its group and its first call hangs
    # there (so the killed job holds every thread's group, however the threads shared the queue).
    sandbox.state.faults.extend([Fault(0), *[Fault(0, delay=30)] * BATCH_THREADS])
    worker = subprocess.Popen(
        [RELAY, "worker", "--lane", "live"],
        env={"PATH": os.environ["PATH"], **env, "RELAY_METRICS_PORT": str(unused_port())},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    ctx = build_context(settings, "usercom")
    started = StartedJobRegistry(queue=ctx.queues[keys.LIVE])
    try:
        deadline = time.monotonic() + 30
        while sandbox.state.faults or len(started.get_job_ids()) != 1:
            assert time.monotonic() < deadline, "the worker never reached the hanging call"
            time.sleep(0.1)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    assert store.ledger()["in_flight"] > 0
    [taken] = redis.keys("relay:batch:*")
    assert redis.llen(taken) >= BATCH_THREADS  # the killed job held other users' jobs: each thread's group
    # Time passes: the leases expire, then rq's maintenance finds the job abandoned (fast-forwarded).
    for lock in redis.keys("relay:user-lock:*"):
        redis.delete(lock)
    started.cleanup(timestamp=time.time() + HEARTBEAT_TTL_SECONDS + 1)
    configure(ctx)
    run_worker(settings, lane=keys.LIVE, destination="usercom", burst=True)
    for user in USERS:
        delivered = sandbox.state.user_by_custom_id(user)
        assert delivered is not None and delivered["attributes"] == {"plan": "pro"}, user
    ledger = store.ledger()
    assert (ledger["delivered"], ledger["dead_lettered"], ledger["in_flight"]) == (len(USERS), 0, 0)
    assert redis.keys("relay:batch:*") == []


def test_claims_whose_answer_is_lost_leave_no_slot_held_under_the_in_flight_cap(
    ctx: DeliveryContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The round trip that books the first call's slot with the claims ran in Redis, but its answer
    never came back: the slot's lease would have held a place under USERCOM_MAX_IN_FLIGHT for 30 s."""
    claim_many = ctx.ordering.claim_many

    def answer_lost(*args: Any, **kwargs: Any) -> Any:
        claim_many(*args, **kwargs)
        raise RedisConnectionError("the connection dropped before the answer")

    monkeypatch.setattr(ctx.ordering, "claim_many", answer_lost)
    for user in USERS[:3]:
        assert ctx.store.accept(an_update(f"evt_{user}", user_id=user))
    with pytest.raises(RedisConnectionError):
        deliver_group(ctx, take_all(ctx))
    assert ctx.redis.zcard(keys.USERCOM.limiter_in_flight) == 0


def test_a_lone_users_claim_whose_answer_is_lost_leaves_no_slot_held(
    ctx: DeliveryContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for a user delivered alone (deliver_user: a job's own user), whose call's slot is booked
    with its claim too."""
    claim = Hold.claim

    def answer_lost(hold: Hold, *args: Any) -> Any:
        claim(hold, *args)
        raise RedisConnectionError("the connection dropped before the answer")

    monkeypatch.setattr(Hold, "claim", answer_lost)
    assert ctx.store.accept(an_update("evt_alone", user_id="alone"))
    with pytest.raises(RedisConnectionError):
        deliver_user(ctx, "stripe", "user:alone")
    assert ctx.redis.zcard(keys.USERCOM.limiter_in_flight) == 0


def take_a_slot(ctx: DeliveryContext) -> None:
    with ctx.limiter.slot():
        pass


def test_the_slots_of_a_group_whose_count_redis_lost_go_with_the_next_booking(
    ctx: DeliveryContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The calls were made, then Redis failed as their outcomes were counted (the count releases their
    slots): the slots are released by the thread's next booking, not held in flight for their lease."""
    for user in ("u0", "u1"):
        assert ctx.store.accept(an_update(f"evt_{user}", user_id=user))

    def lost(*_: Any) -> None:
        raise RedisConnectionError("Redis went away")

    monkeypatch.setattr(ctx.ordering, "settle_many", lost)
    with pytest.raises(RedisConnectionError):
        deliver_group(ctx, take_all(ctx))
    monkeypatch.undo()
    in_flight = keys.USERCOM.limiter_in_flight
    assert ctx.redis.zcard(in_flight) >= 1  # the group's slots, not released with the count
    # A batch's thread ends with its batch: the next booking, from any thread, releases them.
    other = threading.Thread(target=lambda: take_a_slot(ctx))
    other.start()
    other.join(30)
    assert ctx.redis.zcard(in_flight) == 0
