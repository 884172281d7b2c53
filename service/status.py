"""The status document the monitoring dashboard polls: cheap (one Redis round trip), no secrets."""

from __future__ import annotations

import time
from importlib import metadata
from typing import Any

from redis import Redis
from rq.registry import ScheduledJobRegistry
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from service import keys
from service.config import Settings
from service.store import ledger_from


def version() -> str:
    try:
        return metadata.version("relay")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def _number(raw: bytes | None) -> float | None:
    return float(raw) if raw is not None else None


def collect_status(redis: Redis, settings: Settings, *, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    pipe = redis.pipeline(transaction=False)
    for lane in keys.LANES:
        name = keys.QUEUE_NAMES[lane]
        pipe.llen(keys.rq_queue_key(lane))
        pipe.zcard(ScheduledJobRegistry.key_template.format(name))
        pipe.zcard(keys.pending(lane))
        pipe.zrange(keys.pending(lane), 0, 0, withscores=True)
        pipe.scard(WORKERS_BY_QUEUE_KEY % name)
    pipe.hgetall(keys.LEDGER)
    pipe.hgetall(keys.DLQ_REASONS)
    pipe.get(keys.DLQ_DROPPED)
    pipe.get(keys.LAST_DELIVERY)
    pipe.get(keys.LAST_429)
    pipe.get(keys.LIMITER_PAUSED_UNTIL)
    pipe.zcount(keys.LIMITER_IN_FLIGHT, now * 1000, "+inf")
    results = pipe.execute()
    lanes, workers = {}, {}
    for lane in keys.LANES:
        depth, scheduled, pending, oldest, alive = results[:5]
        results = results[5:]
        lanes[lane] = {
            "depth": depth,
            "scheduled": scheduled,
            "pending": pending,
            "oldest_pending_age_seconds": round(max(0.0, now - oldest[0][1]), 3) if oldest else None,
        }
        workers[lane] = alive
    raw_ledger, raw_reasons, dropped, last_delivery, last_429, paused_until_ms, in_flight = results
    paused_until = float(paused_until_ms) / 1000 if paused_until_ms is not None else None
    reasons = {k.decode(): int(v) for k, v in raw_reasons.items()}
    return {
        "version": version(),
        "time": now,
        "lanes": lanes,
        "ledger": ledger_from(raw_ledger),
        "dlq": {"size": sum(reasons.values()), "by_reason": reasons, "dropped_by_retention": int(dropped or 0)},
        "limiter": {
            "rate_limit_per_second": settings.usercom_rate_limit,
            "burst": settings.usercom_burst,
            "max_in_flight": settings.usercom_max_in_flight,
            "in_flight": in_flight,
            "paused_until": paused_until if paused_until is not None and paused_until > now else None,
            "last_429_at": _number(last_429),
        },
        "workers": workers,
        "last_delivery_at": _number(last_delivery),
    }
