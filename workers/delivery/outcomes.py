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
from service.destinations.base import DeliveryError, Retryable
from service.ops.metrics import DELIVERIES
from service.store import keys
from service.store.jobs import delivery_job, job_id_for
from workers.delivery.context import DeliveryContext, job_in_hand

log = logging.getLogger(__name__)
JOB_SUFFIXES = re.compile(r"(-a\d+|-t[0-9a-f]{12})+$")


def backoff_delay(attempt: int, *, base: float, cap: float, jitter: float, retry_after: float | None) -> float:
    """Exponential backoff with full jitter; never sooner than a Retry-After asked for."""
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return max(ceiling * jitter, retry_after or 0.0)


def retry_or_give_up(
    ctx: DeliveryContext,
    update: UserUpdate,
    user_id: str,
    exc: Retryable,
    attempt: int,
    first_failure_at: float | None,
    lane: str,
) -> str:
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
    if now + delay - first > settings.retry_give_up_seconds:
        return dead_letter(
            ctx, update, "retries_exhausted", exc, user_id=user_id, attempt=attempt, first_failure_at=first, lane=lane
        )
    # A re-run of this job schedules the same job id again: no duplicate retry.
    retry = delivery_job(
        ctx.redis,
        update,
        attempt + 1,
        first,
        lane=lane,
        job_id=_next_job_id(ctx, update, attempt),
        destination_keys=ctx.store.keys,
    )
    # rq keeps whole seconds: round up so a Retry-After is never cut short.
    ctx.queues[lane].schedule_job(retry, datetime.fromtimestamp(math.ceil(now + delay), UTC))
    DELIVERIES.labels("retry_scheduled", lane, ctx.client.name).inc()
    log.warning(
        "retrying %s %s in %.1fs (attempt %d): %s",
        update.event_type,
        update.event_id,
        delay,
        attempt,
        exc,
        extra=fields(update, user_id, lane, attempt, "retry_scheduled"),
    )
    return "retry_scheduled"


def put_back(
    ctx: DeliveryContext,
    update: UserUpdate,
    wait: float,
    attempt: int,
    first_failure_at: float | None,
    lane: str,
    why: str,
) -> str:
    """No User.com slot soon, or another job holds the user: run again later, not a failed attempt."""
    job_id = f"{_base_job_id(ctx, update)}-t{uuid.uuid4().hex[:12]}"
    job = delivery_job(
        ctx.redis, update, attempt, first_failure_at, lane=lane, job_id=job_id, destination_keys=ctx.store.keys
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


def _base_job_id(ctx: DeliveryContext, update: UserUpdate) -> str:
    """The id of the job in hand without attempt or put-back suffixes (a replay keeps its own base)."""
    current = get_current_job()
    in_hand = job_in_hand.get() or (current.id if current is not None else None)
    if in_hand is not None:
        return JOB_SUFFIXES.sub("", in_hand)
    return job_id_for(update, destination=ctx.store.keys.destination)


def _next_job_id(ctx: DeliveryContext, update: UserUpdate, attempt: int) -> str:
    return f"{_base_job_id(ctx, update)}-a{attempt + 1}"


def dead_letter(
    ctx: DeliveryContext,
    update: UserUpdate,
    reason: str,
    error: str | DeliveryError,
    *,
    attempt: int,
    first_failure_at: float | None,
    user_id: str | None = None,
    lane: str = keys.LIVE,
) -> str:
    """`error` is a plain message, or the destination's error whose status and (redacted) body are kept."""
    now = ctx.clock()
    status, body = (error.status, error.body) if isinstance(error, DeliveryError) else (None, None)
    item = DeadLetter(
        id=f"{update.source}-{update.event_id}",
        reason=reason,
        source=update.source,
        event_type=update.event_type,
        event_id=update.event_id,
        event_time=update.event_time,
        message=str(error),
        update=update.to_dict(),
        user_id=user_id,
        attempts=attempt,
        first_failure_at=first_failure_at if first_failure_at is not None else now,
        last_failure_at=now,
        last_status=status,
        last_response=body,
    )
    ctx.store.dead_letter(item)
    DELIVERIES.labels("dead_lettered", lane, ctx.client.name).inc()
    log.error(
        "dead-lettered %s %s (%s): %s",
        update.event_type,
        update.event_id,
        reason,
        error,
        extra={**fields(update, user_id, lane, attempt, "dead_lettered"), "reason": reason, "status": status},
    )
    return "dead_lettered"
