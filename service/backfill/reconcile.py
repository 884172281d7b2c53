"""`relay reconcile stripe`: the events Stripe holds for a window that the relay never received.

Stripe's event ids for the window (the mapped types) are compared with the relay's dedup memory
(every event accepted, ignored or refused leaves its id there for RELAY_DEDUP_TTL_SECONDS); the
missing ones are reported and fed through the backfill path. The window must fit in the dedup
memory, else old ids would look missing (they would still be duplicates of nothing: harmless for
the CRM, wrong for the report). Events younger than GRACE_SECONDS are left to their webhook.
Each run is recorded in Redis (keys.reconcile_last) for /status, and counted in metrics.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from redis import Redis

from service.backfill.events import EventReader, Window, feed_after_one_read
from service.backfill.feed import Feeder
from service.backfill.progress import Reporter
from service.ops.metrics import RECONCILE_HEALED, RECONCILE_MISSING, RECONCILE_RUNS
from service.store import keys
from service.store.ledger_dedup import accepted_before, ignored_namespace

GRACE_SECONDS = 300  # an event this young may still be on its way as a webhook
MISSING_IDS_KEPT = 20  # ids listed in the last run's record (the count is whole)


def check_reconcile_window(window: Window, dedup_ttl: int, now: float) -> None:
    if window.since < now - dedup_ttl:
        raise ValueError(
            f"--since reaches past the dedup memory ({dedup_ttl // 3600} h, RELAY_DEDUP_TTL_SECONDS): "
            "older ids cannot be told apart; use `relay backfill` for those"
        )


def reconcile(
    reader: EventReader,
    feeder: Feeder,
    redis: Redis,
    window: Window,
    types: list[str],
    *,
    stop: threading.Event | None = None,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    source = feeder.source_name
    missing_ids: list[str] = []

    def unreceived(page: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
        """The events of `page` the relay has not received (neither accepted nor ignored), and their ids."""
        ids = [feeder.source.describe(event, {}).event_id or "" for event in page]  # Stripe: id; Paddle: event_id
        ttl = feeder.store.dedup_ttl
        seen = accepted_before(redis, source, ids, ttl)
        ignored = accepted_before(redis, ignored_namespace(source), ids, ttl)  # e.g. a refund not yet approved
        known = [a or b for a, b in zip(seen, ignored, strict=True)]
        lost = [(event, event_id) for event, event_id, k in zip(page, ids, known, strict=True) if not k]
        return [event for event, _ in lost], [event_id for _, event_id in lost]

    def still_missing(page: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """What a second read feeds: counted by the first."""
        return unreceived(page)[0]

    def only_missing(page: list[dict[str, Any]]) -> list[dict[str, Any]]:
        missing, lost = unreceived(page)
        feeder.tally.missing += len(missing)
        feeder.tally.counts["duplicate"] += len(page) - len(missing)  # received before: nothing to do
        feeder.tally.read += len(page) - len(missing)
        missing_ids.extend(lost[: max(0, MISSING_IDS_KEPT - len(missing_ids))])
        return missing

    started = time.time()
    try:
        # Its window fits the dedup memory (check_reconcile_window, periodic.window_for): nothing to warn of,
        # though a --since at its very edge would be past it by the time the read starts.
        result = feed_after_one_read(
            reader, feeder, window, types, pick=only_missing, pick_again=still_missing, stop=stop, reporter=reporter
        )
    except Exception:
        RECONCILE_RUNS.labels(source, "failed").inc()
        raise
    summary = {**result.summary, "healed": result.summary["accepted"], "interrupted": result.interrupted}
    RECONCILE_RUNS.labels(source, "interrupted" if result.interrupted else "done").inc()
    if not feeder.dry_run:
        # An interrupted run counts only what it healed: the rest is found missing again by the next run.
        RECONCILE_MISSING.labels(source).inc(summary["healed"] if result.interrupted else summary["missing"])
        RECONCILE_HEALED.labels(source).inc(summary["healed"])
        record = {
            "at": started,
            "since": window.since,
            # What the run covered: a --until still ahead (it may be) would start the next periodic window
            # there, and its first run would read nothing, leaving what happened between unreconciled.
            "until": int(started) if window.until is None else min(window.until, int(started)),
            "missing": summary["missing"],
            "healed": summary["healed"],
            "missing_ids": missing_ids,
            "seconds": summary["seconds"],
            "interrupted": result.interrupted,
        }
        redis.set(keys.reconcile_last(source), json.dumps(record))
    if summary["missing"]:
        logging.getLogger(__name__).warning(
            "reconcile %s: %d events never received, %d %s",
            source,
            summary["missing"],
            summary["healed"],
            "would be queued (dry run)" if feeder.dry_run else "healed",
        )
    return summary


def last_run(redis: Redis, source: str) -> dict[str, Any] | None:
    raw = redis.get(keys.reconcile_last(source))
    return json.loads(raw) if raw else None
