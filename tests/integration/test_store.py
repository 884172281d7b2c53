"""The store's single-script enqueue writes exactly what rq itself would write."""

from __future__ import annotations

import time

from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from service.store import keys
from service.store.dlq import Retention
from service.store.jobs import delivery_job
from service.store.ledger import Store
from service.store.ledger_user import EventOutcome, SettleUser
from tests.conftest import an_update
from workers.delivery.job import on_job_failure

UPDATE = an_update(customer_id="cus_1", standard={"email": "a@b.co"}, custom={"mrr": 1.5}, tags=["paying"])


def _store(redis: Redis) -> Store:
    return Store(
        redis,
        dedup_ttl=300_000,
        retention=Retention(max_items=10, ttl_seconds=3600),
        destination_keys=keys.USERCOM,
        fan_out=(keys.USERCOM,),
    )


def test_enqueued_job_reads_back_as_the_rq_job_rq_would_create(redis: Redis) -> None:
    assert _store(redis).accept(UPDATE)
    [ours_id] = [k.decode() for k in redis.keys("rq:job:*")]
    ours = redis.hgetall(ours_id)
    redis.delete(ours_id, keys.USERCOM.rq_queue_key(keys.LIVE))
    job_id = ours_id.removeprefix("rq:job:")

    queue = Queue(keys.USERCOM.queue_name(keys.LIVE), connection=redis, serializer=JSONSerializer)
    queue.enqueue_job(delivery_job(redis, "stripe", "user:u1", job_id=job_id, destination_keys=keys.USERCOM))
    theirs = redis.hgetall(ours_id)

    per_job = {b"created_at", b"enqueued_at", b"data"}
    assert set(ours) == set(theirs)
    assert {k: v for k, v in ours.items() if k not in per_job} == {k: v for k, v in theirs.items() if k not in per_job}
    redis.hset(ours_id, mapping={b"data": ours[b"data"]})
    job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    assert job.func_name == "workers.delivery.job.deliver"
    assert job.args == [keys.user_ref("stripe", "user:u1")]  # the state keeps who it is for
    assert job.get_status() == JobStatus.QUEUED
    assert job.failure_callback is on_job_failure
    assert redis.sismember("rq:queues", keys.USERCOM.rq_queue_key(keys.LIVE))


def test_events_for_one_user_cost_one_job_and_a_repeat_is_refused(redis: Redis) -> None:
    store = _store(redis)
    assert store.accept(UPDATE)
    assert not store.accept(UPDATE)
    assert store.accept(an_update(event_id="evt_2", custom={"mrr": 2.0}))
    assert redis.llen(keys.USERCOM.rq_queue_key(keys.LIVE)) == 1
    assert store.ledger()["received"] == 2 and store.ledger()["duplicates"] == 1
    assert not redis.keys("relay:dedup:stripe:evt_*") and not redis.keys("relay:outcome:*")  # no per-event keys


def test_settling_counts_each_event_once_and_needs_the_lease(redis: Redis) -> None:
    store = _store(redis)
    sent, merged = UPDATE, an_update(event_id="evt_2", custom={"mrr": 2.0})
    assert store.accept(sent) and store.accept(merged)
    redis.rename(keys.USERCOM.user_state("stripe", "user:u1"), keys.USERCOM.in_hand("stripe", "user:u1"))
    outcomes = [EventOutcome("evt_1", "coalesced"), EventOutcome("evt_2", "delivered")]
    redis.set("lock", "theirs")
    assert store.settle_user(SettleUser("stripe", "user:u1", outcomes, ("lock", "ours"))) is None  # lease lost
    assert store.ledger()["in_flight"] == 2
    redis.set("lock", "ours")
    settled = store.settle_user(SettleUser("stripe", "user:u1", outcomes, ("lock", "ours")))
    assert settled is not None and [s.counted for s in settled] == [True, True]
    assert redis.get("lock") is None and not redis.exists(keys.USERCOM.in_hand("stripe", "user:u1"))
    again = store.settle_user(SettleUser("stripe", "user:u1", outcomes))
    assert again is not None and [s.counted for s in again] == [False, False]
    ledger = store.ledger()
    assert (ledger["delivered"], ledger["coalesced"], ledger["in_flight"]) == (1, 1, 0)
    assert redis.zcard(keys.USERCOM.pending(keys.LIVE)) == 0


def test_a_user_updated_during_its_delivery_is_dated_by_its_oldest_event_still_pending(redis: Redis) -> None:
    """A user updated without pause always has an event that came during the last call: it must not look
    pending since its first event ever (/status oldest_pending_age_seconds, the RelayOldestPendingTooOld alert)."""
    store = _store(redis)
    assert store.accept(UPDATE)
    state, in_hand = keys.USERCOM.user_state("stripe", "user:u1"), keys.USERCOM.in_hand("stripe", "user:u1")
    redis.rename(state, in_hand)  # a delivery holds it
    redis.zadd(keys.USERCOM.pending(keys.LIVE), {keys.pending_ref("stripe", "user:u1"): 1_000.0})  # an hour ago
    came_during_the_call = time.time()
    assert store.accept(an_update(event_id="evt_2", custom={"mrr": 2.0}))
    settled = store.settle_user(SettleUser("stripe", "user:u1", [EventOutcome("evt_1", "delivered")]))
    assert settled is not None and [s.counted for s in settled] == [True]
    [(_, since)] = redis.zrange(keys.USERCOM.pending(keys.LIVE), 0, -1, withscores=True)
    assert int(came_during_the_call) <= since <= time.time()  # evt_2's acceptance, not the first event's
    assert redis.zcard(keys.USERCOM.pending(keys.REPLAY)) == 0  # dated where it is, added nowhere


def test_a_lease_that_lapsed_with_no_one_taking_it_still_counts(redis: Redis) -> None:
    """Redis slow or restarted during the call: the lease expired, no other job took the user. The call
    was made and nothing else would count it: left uncounted, the events stayed in flight for good."""
    store = _store(redis)
    assert store.accept(UPDATE)
    redis.rename(keys.USERCOM.user_state("stripe", "user:u1"), keys.USERCOM.in_hand("stripe", "user:u1"))
    settled = store.settle_user(SettleUser("stripe", "user:u1", [EventOutcome("evt_1", "delivered")], ("lock", "ours")))
    assert settled is not None and [s.counted for s in settled] == [True]
    ledger = store.ledger()
    assert (ledger["delivered"], ledger["in_flight"]) == (1, 0)
    assert not redis.exists(keys.USERCOM.in_hand("stripe", "user:u1"))
    assert redis.zcard(keys.USERCOM.pending(keys.LIVE)) == 0


def test_a_users_job_hash_stays_compact_whatever_the_ids(redis: Redis) -> None:
    """The job carries a fixed-size reference, not the user's ids: every field within Redis' 64-byte
    listpack limit, so a queued user costs ~0.4 KB of job hash instead of ~2 KB."""
    long_ids = an_update(
        "evt_01J9Z6Q4W7R2B5C8D1E4F7G0H3", source="lemonsqueezy", user_id="5f0c6a9e-1d2b-4c3a-9e8f-0123456789ab"
    )
    assert _store(redis).accept(long_ids)
    [job_key] = redis.keys("rq:job:*")
    assert redis.object("encoding", job_key) in (b"listpack", b"ziplist")  # (ziplist: Redis before 7)
    [state_key] = redis.keys("relay:user:*")
    assert redis.hget(state_key, "h") == b"lemonsqueezy user:5f0c6a9e-1d2b-4c3a-9e8f-0123456789ab"


def test_a_live_event_never_waits_behind_a_backfill_job(redis: Redis) -> None:
    """Backfilled work runs below live traffic: a user whose pending state waits for a backfill job
    gets a live job too when a live event arrives (the first to run delivers everything)."""
    store = _store(redis)
    assert store.accept(an_update(event_id="evt_old", custom={"plan": "old"}), lane=keys.BACKFILL)
    assert store.accept(an_update(event_id="evt_old_2", custom={"plan": "older"}), lane=keys.BACKFILL)
    assert redis.llen(keys.USERCOM.rq_queue_key(keys.BACKFILL)) == 1  # one job for the user
    assert redis.llen(keys.USERCOM.rq_queue_key(keys.LIVE)) == 0
    assert store.accept(an_update(event_id="evt_live", custom={"plan": "new"}))
    assert redis.llen(keys.USERCOM.rq_queue_key(keys.LIVE)) == 1
    assert store.accept(an_update(event_id="evt_live_2", custom={"plan": "newer"}))
    assert redis.llen(keys.USERCOM.rq_queue_key(keys.LIVE)) == 1  # still one live job
    assert store.ledger()["received"] == 4
