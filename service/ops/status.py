"""The status document the monitoring dashboard polls: cheap (two Redis round trips), no secrets.

Workers are counted by heartbeat: rq keeps a killed worker in its registry until its hash expires
(minutes), so only those that heartbeat within a job's timeout (plus an idle wait) count as live."""

from __future__ import annotations

import json
import time
from typing import Any

from redis import Redis
from rq.registry import ScheduledJobRegistry
from rq.utils import utcparse
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from service.config import Settings
from service.core.times import iso
from service.core.version import version
from service.store import keys
from service.store.jobs import DELIVERY_JOB_TIMEOUT
from service.store.ledger import ledger_from
from service.store.limiter_scripts import effective_rate, increase_per_second

# A busy worker heartbeats before each job (which may run DELIVERY_JOB_TIMEOUT), an idle one every 15 s.
LIVE_WORKER_SECONDS = DELIVERY_JOB_TIMEOUT + 30


def _number(raw: bytes | None) -> float | None:
    return float(raw) if raw is not None else None


def collect_status(redis: Redis, settings: Settings, *, now: float | None = None) -> dict[str, Any]:
    """Per destination: its lanes, ledger, dead-letter queue, limiter and workers."""
    now = time.time() if now is None else now
    pipe = redis.pipeline(transaction=False)
    for name in settings.destinations:
        _queue_reads(pipe, keys.Keys(name), now)
    results = _count_live_workers(redis, pipe.execute(), now)
    destinations = {}
    for name in settings.destinations:
        size = len(keys.LANES) * 5 + 8
        destinations[name] = _destination(results[:size], _limits(settings, name), now)
        results = results[size:]
    return {
        "version": version(),
        "time": iso(now),
        "time_unix": now,
        "destinations": destinations,
        "reconcile": _reconcile(redis),
    }


RECONCILED_SOURCES = ("stripe", "paddle")


def _reconcile(redis: Redis) -> dict[str, Any]:
    """The last reconcile run per source (when, the window, missing and healed): null when none ran."""
    raw = redis.mget([keys.reconcile_last(source) for source in RECONCILED_SOURCES])
    runs = {source: json.loads(value) if value else None for source, value in zip(RECONCILED_SOURCES, raw, strict=True)}
    for run in filter(None, runs.values()):
        for name in ("at", "since", "until"):  # ISO 8601 UTC, the number beside it as <name>_unix
            if isinstance(run.get(name), int | float):
                run[f"{name}_unix"] = run[name]
                run[name] = iso(run[name])
    return runs


def _limits(settings: Settings, destination: str) -> dict[str, float]:
    limits = settings.destination(destination)
    return {"rate_limit_per_second": limits.rate_limit, "burst": limits.burst, "max_in_flight": limits.max_in_flight}


def _queue_reads(pipe: Any, own: keys.Keys, now: float) -> None:
    for lane in keys.LANES:
        name = own.queue_name(lane)
        pipe.llen(own.rq_queue_key(lane))
        pipe.zcard(ScheduledJobRegistry.key_template.format(name))
        pipe.zcard(own.pending(lane))
        pipe.zrange(own.pending(lane), 0, 0, withscores=True)
        pipe.smembers(WORKERS_BY_QUEUE_KEY % name)
    pipe.hgetall(own.ledger)
    pipe.hgetall(own.dlq[2])
    pipe.get(own.dlq[3])
    pipe.get(own.last_delivery)
    pipe.get(own.last_429)
    pipe.get(own.limiter_paused_until)
    pipe.zcount(own.limiter_in_flight, now * 1000, "+inf")
    pipe.hmget(own.limiter_rate, "base", "at")


def _count_live_workers(redis: Redis, results: list[Any], now: float) -> list[Any]:
    """Replace each lane's registered worker keys (a set) with how many of them heartbeat recently."""
    registered = [(i, sorted(value)) for i, value in enumerate(results) if isinstance(value, set)]
    pipe = redis.pipeline(transaction=False)
    for _, worker_keys in registered:
        for key in worker_keys:
            pipe.hget(key, "last_heartbeat")
    beats = iter(pipe.execute())
    counted = list(results)
    for i, worker_keys in registered:
        counted[i] = sum(_recent(next(beats), now) for _ in worker_keys)
    return counted


def _recent(heartbeat: bytes | None, now: float) -> bool:
    return heartbeat is not None and now - utcparse(heartbeat.decode()).timestamp() < LIVE_WORKER_SECONDS


def _destination(results: list[Any], limits: dict[str, float], now: float) -> dict[str, Any]:
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
    raw_ledger, raw_reasons, dropped, last_delivery, last_429, paused_until_ms, in_flight, (base, at) = results
    ceiling = limits["rate_limit_per_second"]
    rate = effective_rate(_number(base), _number(at), now * 1000, ceiling, increase_per_second(ceiling))
    paused_until = float(paused_until_ms) / 1000 if paused_until_ms is not None else None
    paused_until = paused_until if paused_until is not None and paused_until > now else None
    reasons = {k.decode(): int(v) for k, v in raw_reasons.items()}
    return {
        "lanes": lanes,
        "ledger": ledger_from(raw_ledger),
        "dlq": {"size": sum(reasons.values()), "by_reason": reasons, "dropped_by_retention": int(dropped or 0)},
        "limiter": {
            **limits,
            "in_flight": in_flight,
            "effective_rate_per_second": round(rate, 3),  # AIMD: lowered by 429s, at most the limit
            **_time("paused_until", paused_until),
            **_time("last_429_at", _number(last_429)),
        },
        "workers": workers,
        **_time("last_delivery_at", _number(last_delivery)),
    }


def _time(name: str, epoch: float | None) -> dict[str, Any]:
    """A time as ISO 8601 for people, and as `<name>_unix` epoch seconds for dashboards."""
    return {name: iso(epoch), f"{name}_unix": epoch}
