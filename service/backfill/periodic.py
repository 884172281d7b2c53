"""RELAY_RECONCILE_INTERVAL: `relay worker` reconciles every interval, one instance cluster-wide.

A thread in the worker supervisor wakes every interval and takes a Redis lock (SET NX EX, held
for the interval and left to expire: whichever worker takes it runs, the others skip that round).
Each run covers from where the last one ended (less GRACE_SECONDS of overlap) to GRACE_SECONDS ago,
at most the dedup memory back; the first run covers two intervals. Runs for each source whose
API key is set (STRIPE_API_KEY, PADDLE_API_KEY), each under its own lock and record. A failed
run is logged and counted; the next one retries.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from redis import Redis

from service.backfill.events import Window
from service.backfill.feed import Feeder
from service.backfill.readers import KEY_VARIABLES, has_key, reader_for
from service.backfill.reconcile import GRACE_SECONDS, last_run, reconcile
from service.config import Settings
from service.store import keys
from service.store.connection import worker_redis
from service.store.ledger import Store

log = logging.getLogger(__name__)
SOURCE = "stripe"
SOURCES = tuple(KEY_VARIABLES)


def window_for(redis: Redis, settings: Settings, now: float, source: str = SOURCE) -> Window:
    interval = settings.reconcile_interval_seconds
    until = int(now - GRACE_SECONDS)
    floor = int(now - settings.dedup_ttl_seconds + settings.max_clock_skew_seconds + GRACE_SECONDS)
    previous = last_run(redis, source)
    if previous and previous.get("until") and not previous.get("interrupted"):
        since = int(previous["until"]) - GRACE_SECONDS
    else:
        since = until - 2 * interval
    return Window(max(since, floor), until)


def run_once(settings: Settings, redis: Redis, *, now: float | None = None, source: str = SOURCE) -> dict | None:
    """One round: None if another worker holds this interval's lock."""
    now = time.time() if now is None else now
    token = uuid.uuid4().hex
    if not redis.set(keys.reconcile_lock(source), token, nx=True, ex=max(1, settings.reconcile_interval_seconds - 1)):
        return None
    reader = reader_for(source, settings)
    feeder = Feeder(settings, Store.from_settings(redis, settings), source)
    types = sorted(settings.mapping.rules.get(source, {}))
    return reconcile(reader, feeder, redis, window_for(redis, settings, now, source), types)


def start(settings: Settings) -> threading.Thread | None:
    """The reconcile thread, if RELAY_RECONCILE_INTERVAL and a provider's API key are set."""
    if not settings.reconcile_interval_seconds:
        return None
    sources = [source for source in SOURCES if has_key(source, settings)]
    if not sources:
        names = " nor ".join(KEY_VARIABLES.values())
        log.warning("RELAY_RECONCILE_INTERVAL is set but neither %s is: no periodic reconcile", names)
        return None

    def loop() -> None:
        redis = worker_redis(settings.redis_url)
        while True:
            for source in sources:
                try:
                    summary = run_once(settings, redis, source=source)
                    if summary is not None:
                        log.info("reconcile %s: %d missing, %d healed", source, summary["missing"], summary["healed"])
                except Exception as exc:  # a failed round is retried next interval
                    log.warning("reconcile %s failed: %s", source, type(exc).__name__ if not str(exc) else exc)
            time.sleep(settings.reconcile_interval_seconds)

    thread = threading.Thread(target=loop, name="relay-reconcile", daemon=True)
    thread.start()
    return thread
