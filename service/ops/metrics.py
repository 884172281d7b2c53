"""Prometheus metrics, correct across gunicorn's processes and the worker processes.

Processes record counters and histograms; with PROMETHEUS_MULTIPROC_DIR set (as `relay web`
and `relay worker` do) they land in files that one scrape adds up. Gauges that describe the
shared state (queues, dead letters, the ledger) are read from Redis at scrape time by the web
side only, so every pod reports its own work and exactly one place reports the shared state.
"""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

from service.ops.metrics_dir import MULTIPROC_ENV

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
VALUES_DROPPED = Counter(
    "relay_values_dropped_total",
    "Values left out of a delivered update because the destination's rules would refuse them",
    ["attribute", "reason"],
)
USERKIT_REQUESTS = Counter(
    "relay_userkit_requests_total", "UserKit API calls by endpoint and status", ["endpoint", "status"]
)
USERKIT_SECONDS = Histogram(
    "relay_userkit_request_duration_seconds", "UserKit API call latency", ["endpoint"], buckets=LATENCY_BUCKETS
)

RECONCILE_RUNS = Counter("relay_reconcile_runs_total", "Reconcile runs by source and outcome", ["source", "outcome"])
RECONCILE_MISSING = Counter(
    "relay_reconcile_missing_total", "Events the provider sent that the relay never received", ["source"]
)
RECONCILE_HEALED = Counter("relay_reconcile_healed_total", "Missing events fed through the backfill path", ["source"])


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
