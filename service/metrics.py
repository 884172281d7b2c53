"""Prometheus metrics, correct across gunicorn's processes and the worker processes.

Processes record counters and histograms; with PROMETHEUS_MULTIPROC_DIR set (as `relay web`
and `relay worker` do) they land in files that one scrape adds up. Gauges that describe the
shared state (queues, dead letters, the ledger) are read from Redis at scrape time by the web
side only, so every pod reports its own work and exactly one place reports the shared state.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError

from service.api_schemas import REASONS
from service.config import Settings
from service.metrics_dir import MULTIPROC_ENV

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DELIVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)

WEBHOOKS = Counter(
    "relay_webhooks_total", "Webhooks answered, by source, event type and outcome", ["source", "event_type", "outcome"]
)
INGEST_SECONDS = Histogram(
    "relay_ingest_duration_seconds", "Time to answer a webhook", ["source"], buckets=LATENCY_BUCKETS
)
DELIVERIES = Counter("relay_deliveries_total", "Delivery job outcomes", ["outcome", "lane", "destination"])
DELIVERY_LATENCY = Histogram(
    "relay_delivery_latency_seconds",
    "From webhook accepted to User.com 2xx, retries included",
    buckets=DELIVERY_BUCKETS,
)
USERCOM_REQUESTS = Counter(
    "relay_usercom_requests_total", "User.com API calls by endpoint and status", ["endpoint", "status"]
)
USERCOM_SECONDS = Histogram(
    "relay_usercom_request_duration_seconds", "User.com API call latency", ["endpoint"], buckets=LATENCY_BUCKETS
)
USERKIT_REQUESTS = Counter(
    "relay_userkit_requests_total", "UserKit API calls by endpoint and status", ["endpoint", "status"]
)
USERKIT_SECONDS = Histogram(
    "relay_userkit_request_duration_seconds", "UserKit API call latency", ["endpoint"], buckets=LATENCY_BUCKETS
)


def mark_process_dead(pid: int) -> None:
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)


def process_metrics() -> bytes:
    """What this pod's processes recorded (all of them in multiprocess mode)."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


class SharedStateCollector(Collector):
    """Gauges and counters read from Redis at scrape time; `relay_redis_up 0` when it cannot be read."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings

    def collect(self) -> Iterator[Any]:
        from service.status import collect_status

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
        for name, dest in status["destinations"].items():
            for lane, values in dest["lanes"].items():
                depth.add_metric([name, lane], values["depth"])
                scheduled.add_metric([name, lane], values["scheduled"])
                age.add_metric([name, lane], values["oldest_pending_age_seconds"] or 0)
                workers.add_metric([name, lane], dest["workers"][lane])
            for reason in sorted(set(REASONS) | set(dest["dlq"]["by_reason"])):
                dlq.add_metric([name, reason], dest["dlq"]["by_reason"].get(reason, 0))
            dropped.add_metric([name], dest["dlq"]["dropped_by_retention"])
            for state in ("received", "delivered", "coalesced", "ignored", "dead_lettered", "replayed", "duplicates"):
                events.add_metric([name, state], dest["ledger"][state])
            in_flight.add_metric([name], dest["ledger"]["in_flight"])
            last.add_metric([name], dest["last_delivery_at"] or 0)
            paused_until = dest["limiter"]["paused_until"]
            pause.add_metric([name], max(0.0, paused_until - status["time"]) if paused_until else 0.0)
        yield from (depth, scheduled, age, workers, dlq, dropped, events, in_flight, last, pause)


def shared_state_metrics(redis: Redis, settings: Settings) -> bytes:
    registry = CollectorRegistry()
    registry.register(SharedStateCollector(redis, settings))
    return generate_latest(registry)
