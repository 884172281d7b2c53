"""The store's single-script enqueue writes exactly what rq itself would write."""

from __future__ import annotations

from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from service.store import keys
from service.store.dlq import Retention
from service.store.jobs import delivery_job
from service.store.ledger import Store
from tests.conftest import an_update
from workers.delivery.job import on_job_failure

UPDATE = an_update(customer_id="cus_1", standard={"email": "a@b.co"}, custom={"mrr": 1.5}, tags=["paying"])


def test_enqueued_job_reads_back_as_the_rq_job_rq_would_create(redis: Redis) -> None:
    assert Store(
        redis,
        dedup_ttl=300_000,
        retention=Retention(max_items=10, ttl_seconds=3600),
        destination_keys=keys.USERCOM,
        fan_out=(keys.USERCOM,),
    ).accept(UPDATE)
    ours = redis.hgetall("rq:job:stripe-evt_1")
    redis.delete("rq:job:stripe-evt_1", keys.USERCOM.rq_queue_key(keys.LIVE))

    queue = Queue(keys.USERCOM.queue_name(keys.LIVE), connection=redis, serializer=JSONSerializer)
    queue.enqueue_job(delivery_job(redis, UPDATE, destination_keys=keys.USERCOM))
    theirs = redis.hgetall("rq:job:stripe-evt_1")

    per_job = {b"created_at", b"enqueued_at", b"data"}
    assert set(ours) == set(theirs)
    assert {k: v for k, v in ours.items() if k not in per_job} == {k: v for k, v in theirs.items() if k not in per_job}
    redis.hset("rq:job:stripe-evt_1", mapping={b"data": ours[b"data"]})
    job = Job.fetch("stripe-evt_1", connection=redis, serializer=JSONSerializer)
    assert job.func_name == "workers.delivery.job.deliver"
    assert job.args == [UPDATE.to_dict(), 1, None, "live"]
    assert job.get_status() == JobStatus.QUEUED
    assert job.failure_callback is on_job_failure
    assert redis.sismember("rq:queues", keys.USERCOM.rq_queue_key(keys.LIVE))


def test_ledger_counts_each_outcome_once(redis: Redis) -> None:
    store = Store(
        redis,
        dedup_ttl=300_000,
        retention=Retention(max_items=10, ttl_seconds=3600),
        destination_keys=keys.USERCOM,
        fan_out=(keys.USERCOM,),
    )
    assert store.accept(UPDATE)
    assert not store.accept(UPDATE)
    assert store.settle([(UPDATE, "delivered")])[0]
    assert not store.settle([(UPDATE, "delivered")])[0]
    assert store.ledger() == {
        "received": 1,
        "delivered": 1,
        "coalesced": 0,
        "ignored": 0,
        "dead_lettered": 0,
        "in_flight": 0,
        "duplicates": 1,
        "replayed": 0,
    }


def test_settling_counts_every_update_and_ends_only_the_lease_it_is_given(redis: Redis) -> None:
    store = Store(
        redis,
        dedup_ttl=300_000,
        retention=Retention(max_items=10, ttl_seconds=3600),
        destination_keys=keys.USERCOM,
        fan_out=(keys.USERCOM,),
    )
    sent, merged = UPDATE, an_update(event_id="evt_2", custom={"mrr": 2.0})
    assert store.accept(sent) and store.accept(merged)
    redis.set("lock", "theirs")
    assert [s.counted for s in store.settle([(sent, "delivered"), (merged, "coalesced")], ("lock", "ours"))] == [
        True,
        True,
    ]
    assert redis.get("lock") == b"theirs"  # another job's lease is not ours to end
    assert store.ledger()["delivered"] == 1 and store.ledger()["coalesced"] == 1
    assert store.ledger()["in_flight"] == 0

    redis.set("lock", "ours")
    assert [s.counted for s in store.settle([(merged, "coalesced")], ("lock", "ours"))] == [False]
    assert redis.get("lock") is None
    assert store.ledger()["coalesced"] == 1
