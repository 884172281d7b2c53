"""RELAY_RECONCILE_INTERVAL: `relay worker` reconciles every interval, one instance cluster-wide.

A thread in the worker supervisor wakes every interval and takes a Redis lock (SET NX EX, held
for the interval and left to expire: whichever worker takes it runs, the others skip that round).
Each run covers from where the last one ended (less GRACE_SECONDS of overlap) to GRACE_SECONDS ago,
at most the dedup memory back; the first run covers two intervals. Runs for each source whose
API key is set (Stripe: STRIPE_API_KEY). A failed run is logged and counted; the next one retries.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from redis import Redis

from service.backfill.events import Window
from service.backfill.feed import Feeder
from service.backfill.reconcile import GRACE_SECONDS, last_run, reconcile
from service.backfill.stripe_reader import StripeReader
from service.config import Settings
from service.store import keys
from service.store.connection import worker_redis
from service.store.ledger import Store

log = logging.getLogger(__name__)
SOURCE = "stripe"


def window_for(redis: Redis, settings: Settings, now: float) -> Window:
    interval = settings.reconcile_interval_seconds
    until = int(now - GRACE_SECONDS)
    floor = int(now - settings.dedup_ttl_seconds + settings.max_clock_skew_seconds + GRACE_SECONDS)
    previous = last_run(redis, SOURCE)
    if previous and previous.get("until") and not previous.get("interrupted"):
        since = int(previous["until"]) - GRACE_SECONDS
    else:
        since = until - 2 * interval
    return Window(max(since, floor), until)


def run_once(settings: Settings, redis: Redis, *, now: float | None = None) -> dict | None:
    """One round: None if another worker holds this interval's lock."""
    now = time.time() if now is None else now
    token = uuid.uuid4().hex
    if not redis.set(keys.reconcile_lock(SOURCE), token, nx=True, ex=max(1, settings.reconcile_interval_seconds - 1)):
        return None
    reader = StripeReader(settings.stripe_api_key, settings.stripe_api_base)
    feeder = Feeder(settings, Store.from_settings(redis, settings), SOURCE)
    types = sorted(settings.mapping.rules.get(SOURCE, {}))[:20]
    return reconcile(reader, feeder, redis, window_for(redis, settings, now), types)


def start(settings: Settings) -> threading.Thread | None:
    """The reconcile thread, if RELAY_RECONCILE_INTERVAL and STRIPE_API_KEY are set."""
    if not settings.reconcile_interval_seconds:
        return None
    if not settings.stripe_api_key:
        log.warning("RELAY_RECONCILE_INTERVAL is set but STRIPE_API_KEY is not: no periodic reconcile")
        return None

    def loop() -> None:
        redis = worker_redis(settings.redis_url)
        while True:
            try:
                summary = run_once(settings, redis)
                if summary is not None:
                    log.info("reconcile %s: %d missing, %d healed", SOURCE, summary["missing"], summary["healed"])
            except Exception as exc:  # a failed round is retried next interval
                log.warning("reconcile %s failed: %s", SOURCE, type(exc).__name__ if not str(exc) else exc)
            time.sleep(settings.reconcile_interval_seconds)

    thread = threading.Thread(target=loop, name="relay-reconcile", daemon=True)
    thread.start()
    return thread
