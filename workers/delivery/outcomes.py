"""How a delivery that did not go out ends for now: a retry scheduled with backoff, put back for
later (throttled, user busy), or dead-lettered. Each is counted and logged."""

from __future__ import annotations

import logging
import math
import re
import uuid
from datetime import UTC, datetime

from rq import get_current_job

from service.core.dead_letter import DeadLetter
from service.core.update import UserUpdate
from service.destinations.base import Retryable
from service.ops.metrics import DELIVERIES
from service.store import keys
from service.store.jobs import delivery_job, user_job_id
from workers.delivery.context import DeliveryContext, job_in_hand
from workers.ordering import Hold

log = logging.getLogger(__name__)
JOB_SUFFIXES = re.compile(r"(-a\d+|-t[0-9a-f]{12})+$")


def backoff_delay(attempt: int, *, base: float, cap: float, jitter: float, retry_after: float | None) -> float:
    """Exponential backoff with full jitter; never sooner than a Retry-After asked for, never later than
    `cap` whatever it asked for."""
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return max(ceiling * jitter, min(retry_after or 0.0, cap))


def retry_or_give_up(
    ctx: DeliveryContext, hold: Hold, exc: Retryable, attempt: int, first_failure_at: float | None, lane: str
) -> str:
    """The state stays in hand for the retry job (or the next job for the user, whichever runs first)."""
    settings = ctx.settings
    now = ctx.clock()
    first = first_failure_at if first_failure_at is not None else now
    delay = backoff_delay(
        attempt,
        base=settings.retry_base_seconds,
        cap=settings.retry_max_delay_seconds,
        jitter=ctx.jitter(),
        retry_after=exc.retry_after,
    )
    # Retried until RELAY_RETRY_GIVE_UP_SECONDS after the first failure, the last time at that moment (a
    # longer backoff or Retry-After is cut to it: the limiter's pause still holds the call back).
    left = first + settings.retry_give_up_seconds - now
    if left <= 0:
        from workers.delivery.send import settle_all  # send.py imports this module's `fields`

        settle_all(ctx, hold, "retries_exhausted", exc, attempt, first, lane)
        return "dead_lettered"
    delay = min(delay, left)
    # A re-run of this job schedules the same job id again: no duplicate retry.
    job_id = f"{_base_job_id(ctx, hold.source, hold.hint)}-a{attempt + 1}"
    retry = delivery_job(
        ctx.redis, hold.source, hold.hint, attempt + 1, first, lane=lane, job_id=job_id, destination_keys=ctx.store.keys
    )
    # rq keeps whole seconds: round up so a Retry-After is never cut short.
    ctx.queues[lane].schedule_job(retry, datetime.fromtimestamp(math.ceil(now + delay), UTC))
    DELIVERIES.labels("retry_scheduled", lane, ctx.client.name).inc()
    log.warning("retrying user %s in %.1fs (attempt %d): %s", hold.user_id, delay, attempt, exc)
    return "retry_scheduled"


def put_back(
    ctx: DeliveryContext,
    source: str,
    hint: str,
    wait: float,
    attempt: int,
    first_failure_at: float | None,
    lane: str,
    why: str,
) -> str:
    """No destination slot soon, or another job holds the user: run again later, not a failed attempt."""
    job_id = f"{_base_job_id(ctx, source, hint)}-t{uuid.uuid4().hex[:12]}"
    job = delivery_job(
        ctx.redis, source, hint, attempt, first_failure_at, lane=lane, job_id=job_id, destination_keys=ctx.store.keys
    )
    ctx.queues[lane].schedule_job(job, datetime.fromtimestamp(math.ceil(ctx.clock() + wait), UTC))
    DELIVERIES.labels(why, lane, ctx.client.name).inc()
    return why


def fields(update: UserUpdate, user_id: str | None, lane: str, attempt: int, outcome: str) -> dict[str, object]:
    return {
        "source": update.source,
        "event_id": update.event_id,
        "event_type": update.event_type,
        "user_id": user_id,
        "lane": lane,
        "attempt": attempt,
        "outcome": outcome,
    }


def _base_job_id(ctx: DeliveryContext, source: str, hint: str) -> str:
    """The id of the job in hand without attempt or put-back suffixes."""
    current = get_current_job()
    in_hand = job_in_hand.get() or (current.id if current is not None else None)
    if in_hand is not None:
        return JOB_SUFFIXES.sub("", in_hand)
    return user_job_id(source, hint, ctx.store.keys.destination)


def dead_letter_legacy(ctx: DeliveryContext, update: UserUpdate, reason: str, message: str) -> str:
    """An event of a per-event job from before the upgrade that cannot be parked (it names no user)."""
    now = ctx.clock()
    item = DeadLetter(
        id=f"{update.source}-{update.event_id}",
        reason=reason,
        source=update.source,
        event_type=update.event_type,
        event_id=update.event_id,
        event_time=update.event_time,
        message=message,
        update=update.to_dict(),
        attempts=1,
        first_failure_at=now,
        last_failure_at=now,
    )
    ctx.store.dead_letter(item)
    DELIVERIES.labels("dead_lettered", keys.LIVE, ctx.client.name).inc()
    return "dead_lettered"
