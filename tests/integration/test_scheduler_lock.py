"""A scheduler that died holding its queue's lock (its worker killed while it started) no longer leaves
the queue's retries and put-back jobs unscheduled until rq's lock lapses (a minute): the next
maintenance pass of any worker of the queue frees it, and rq's maintenance starts a scheduler."""

from __future__ import annotations

from redis import Redis
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer

from service.config import Settings
from service.store import keys
from service.store.scheduler_scripts import SCHEDULER_LOCK_TTL_SECONDS, SCHEDULER_STALE_SECONDS
from workers.runner import DeliveryWorker, build_context


def test_a_lock_no_scheduler_refreshes_is_freed_a_refreshed_one_kept(settings: Settings, redis: Redis) -> None:
    ctx = build_context(settings, "usercom")
    live, replay = ctx.queues[keys.LIVE], ctx.queues[keys.REPLAY]
    worker = DeliveryWorker([live, replay], connection=ctx.redis, serializer=JSONSerializer)
    stale, fresh = RQScheduler.get_locking_key(live.name), RQScheduler.get_locking_key(replay.name)
    redis.set(stale, "a-dead-scheduler", ex=SCHEDULER_LOCK_TTL_SECONDS - SCHEDULER_STALE_SECONDS - 1)
    redis.set(fresh, "a-live-scheduler", ex=SCHEDULER_LOCK_TTL_SECONDS - 1)  # refreshed a second ago
    worker.run_maintenance_tasks()
    assert redis.get(stale) is None
    assert redis.get(fresh) == b"a-live-scheduler"
    ctx.redis.close()
