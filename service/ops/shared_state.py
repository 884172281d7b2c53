"""Gauges and counters of the shared state (queues, dead letters, ledgers, limiters), read from
Redis at scrape time by the web side only, so that exactly one place reports them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError

from service.config import Settings
from service.core.dead_letter import reasons
from service.ops.status import collect_status


class SharedStateCollector(Collector):
    """Gauges and counters read from Redis at scrape time; `relay_redis_up 0` when it cannot be read."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("relay_redis_up", "1 when Redis answered this scrape")
        try:
            status = collect_status(self.redis, self.settings)
        except RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        label = ["destination"]
        depth = GaugeMetricFamily("relay_queue_depth", "Delivery jobs ready to run", labels=[*label, "lane"])
        scheduled = GaugeMetricFamily(
            "relay_queue_scheduled", "Retries waiting for their time", labels=[*label, "lane"]
        )
        age = GaugeMetricFamily(
            "relay_oldest_pending_age_seconds", "Age of the oldest unsettled update", labels=[*label, "lane"]
        )
        workers = GaugeMetricFamily("relay_workers", "Worker processes registered", labels=[*label, "lane"])
        dlq = GaugeMetricFamily("relay_dlq_size", "Dead-letter items kept, by reason", labels=[*label, "reason"])
        dropped = CounterMetricFamily("relay_dlq_dropped", "Dead-letter items dropped by retention", labels=label)
        events = CounterMetricFamily("relay_events", "Events by ledger column, all pods", labels=[*label, "state"])
        in_flight = GaugeMetricFamily("relay_events_in_flight", "Accepted events not yet settled", labels=label)
        last = GaugeMetricFamily(
            "relay_last_delivery_timestamp_seconds", "Time of the last successful delivery", labels=label
        )
        pause = GaugeMetricFamily("relay_ratelimit_pause_seconds", "Seconds left in a 429 pause", labels=label)
        rate = GaugeMetricFamily(
            "relay_ratelimit_effective_rate", "Calls per second the limiter allows now (AIMD)", labels=label
        )
        for name, dest in status["destinations"].items():
            rate.add_metric([name], dest["limiter"]["effective_rate_per_second"])
            for lane, values in dest["lanes"].items():
                depth.add_metric([name, lane], values["depth"])
                scheduled.add_metric([name, lane], values["scheduled"])
                age.add_metric([name, lane], values["oldest_pending_age_seconds"] or 0)
                workers.add_metric([name, lane], dest["workers"][lane])
            for reason in sorted(set(reasons(self.settings.destinations)) | set(dest["dlq"]["by_reason"])):
                dlq.add_metric([name, reason], dest["dlq"]["by_reason"].get(reason, 0))
            dropped.add_metric([name], dest["dlq"]["dropped_by_retention"])
            for state in ("received", "delivered", "coalesced", "ignored", "dead_lettered", "replayed", "duplicates"):
                events.add_metric([name, state], dest["ledger"][state])
            in_flight.add_metric([name], dest["ledger"]["in_flight"])
            last.add_metric([name], dest["last_delivery_at_unix"] or 0)
            paused_until = dest["limiter"]["paused_until_unix"]
            pause.add_metric([name], max(0.0, paused_until - status["time_unix"]) if paused_until else 0.0)
        yield from (depth, scheduled, age, workers, dlq, dropped, events, in_flight, last, pause, rate)
        yield from redis_memory(self.redis)


def redis_memory(redis: Redis) -> Iterator[GaugeMetricFamily]:
    """Redis used and max memory (INFO memory): with noeviction, writes fail once used reaches max.
    Nothing when INFO is refused (a managed Redis may deny it) or Redis went away meanwhile."""
    try:
        info = redis.info("memory")
    except RedisError:
        return
    used = GaugeMetricFamily("relay_redis_memory_used_bytes", "Memory Redis uses for data (INFO used_memory)")
    used.add_metric([], float(info.get("used_memory", 0)))
    limit = GaugeMetricFamily("relay_redis_memory_max_bytes", "Redis maxmemory (0: no limit set)")
    limit.add_metric([], float(info.get("maxmemory", 0)))
    yield from (used, limit)


def shared_state_metrics(redis: Redis, settings: Settings) -> bytes:
    registry = CollectorRegistry()
    registry.register(SharedStateCollector(redis, settings))
    return generate_latest(registry)
