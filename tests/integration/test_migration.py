"""After an upgrade: what the per-event release left in Redis (a job carrying each event's whole update,
its pending member, its dedup key) is delivered once and still refuses a repeat."""

from __future__ import annotations

import json
import time

from redis import Redis
from rq import SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer

from service.config import Settings
from service.devtools.usercom_sandbox import SandboxServer
from service.store import keys
from service.store.jobs import DELIVER_FUNC, job_id_for
from service.store.ledger import Store
from tests.conftest import an_update
from workers.delivery.context import configure
from workers.delivery.job import deliver_update
from workers.runner import build_context


def _old_release_accepted(redis: Redis, settings: Settings, event_id: str, plan: str, event_time: int) -> None:
    """What the per-event ACCEPT_JOB_SCRIPT wrote: ledger, dedup key, job, pending member, parked update."""
    update = an_update(event_id, user_id="u_old", custom={"plan": plan}, event_time=event_time)
    redis.hincrby(keys.USERCOM.ledger, "received", 1)
    redis.set(keys.dedup("stripe", event_id), "1", ex=settings.dedup_ttl_seconds)
    redis.zadd(keys.USERCOM.pending(keys.LIVE), {keys.pending_member("stripe", event_id): time.time()})
    redis.hset(f"relay:parked:stripe:{update.hint}", event_id, json.dumps(update.to_dict()))
    job = Job.create(
        DELIVER_FUNC,
        args=(update.to_dict(), 1, None, keys.LIVE),
        connection=redis,
        serializer=JSONSerializer,
        id=job_id_for(update, destination="usercom"),
        origin=keys.USERCOM.queue_name(keys.LIVE),
    )
    job.save()
    redis.rpush(keys.USERCOM.rq_queue_key(keys.LIVE), job.id)


def test_events_queued_by_the_per_event_release_are_delivered_once(
    settings: Settings, redis: Redis, sandbox: SandboxServer
) -> None:
    sandbox.state.seed(["u_old"])
    _old_release_accepted(redis, settings, "evt_old_1", "starter", 1)
    _old_release_accepted(redis, settings, "evt_old_2", "legacy", 2)
    store = Store.from_settings(redis, settings)
    assert not store.accept(an_update("evt_old_1", user_id="u_old"))  # the old dedup key still refuses it
    assert store.accept(an_update("evt_new", user_id="u_new"))  # new events take the new path beside them
    ctx = build_context(settings, "usercom")
    configure(ctx)
    SimpleWorker([ctx.queues[keys.LIVE]], connection=ctx.redis, serializer=JSONSerializer).work(burst=True)
    assert sandbox.state.user_by_custom_id("u_old")["attributes"]["plan"] == "legacy"  # type: ignore[index]
    assert sandbox.state.user_by_custom_id("u_new") is not None
    ledger = store.ledger()
    assert (ledger["received"], ledger["in_flight"], ledger["duplicates"]) == (3, 0, 1)
    assert redis.zcard(keys.USERCOM.pending(keys.LIVE)) == 0
    calls = len(sandbox.state.requests)
    # rq runs an old job again (its worker died after counting): counted once, not sent again.
    assert deliver_update(ctx, an_update("evt_old_2", user_id="u_old", custom={"plan": "legacy"})) == "settled"
    assert len(sandbox.state.requests) == calls and store.ledger()["in_flight"] == 0
