"""The delivery job: one normalized update to one destination, then a counted outcome.

A worker process serves one destination (its queues, ledger, dead-letter queue and limiter).
Every job ends in exactly one of: delivered, ignored (nothing in it for this destination),
dead-lettered (rejected by the destination, identity unresolved, or retries exhausted), or a
retry scheduled as a new job (workers/delivery/outcomes.py). Outcomes are counted once per
event even when a job runs twice (a worker killed mid-job is re-run by rq), and updates are
idempotent (attribute sets, add-only tags), so a re-run changes nothing.

`deliver` and `on_job_failure` are what rq runs, by dotted name (service/store/jobs.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis import Redis
from rq import get_current_job
from rq.job import Job

from service.core.dead_letter import DeadLetter
from service.core.update import UserUpdate
from service.destinations.base import Rejected, Retryable
from service.ops.metrics import DELIVERIES, DELIVERY_LATENCY
from service.store import keys
from service.store.trace import TraceEntry
from workers.delivery.batch import return_taken, run_batch
from workers.delivery.context import DeliveryContext, current, job_in_hand
from workers.delivery.dropped import report_dropped
from workers.delivery.outcomes import dead_letter, fields, put_back, retry_or_give_up
from workers.ordering import Hold, UserBusy, merge
from workers.ratelimit import Throttled

log = logging.getLogger(__name__)
USER_BUSY_WAIT_SECONDS = 1.0


def deliver(
    update: dict[str, Any], attempt: int = 1, first_failure_at: float | None = None, lane: str = keys.LIVE
) -> str:
    """rq entry point (referenced by name from service.store.jobs): this job's update, then
    the jobs queued behind it (workers/delivery/batch.py)."""
    ctx = current()
    started = time.monotonic()
    outcome = deliver_update(ctx, UserUpdate.from_dict(update), attempt, first_failure_at, lane)
    running = get_current_job()
    if running is not None and outcome != "throttled":
        run = lambda job_id, args: _run_taken(ctx, job_id, args)  # noqa: E731
        run_batch(ctx.redis, ctx.store.keys, lane, running.id, run, started=started)
    return outcome


def _run_taken(ctx: DeliveryContext, job_id: str, args: list[Any]) -> str:
    token = job_in_hand.set(job_id)
    try:
        return deliver_update(ctx, UserUpdate.from_dict(args[0]), *args[1:])
    finally:
        job_in_hand.reset(token)


def resolve_identity(redis: Redis, update: UserUpdate) -> str | None:
    """metadata user id, else the one learned for this customer (intake learns it from events
    carrying both), else the customer id itself."""
    if update.user_id:
        return update.user_id
    if update.customer_id:
        learned = redis.hget(keys.customer_map(update.source), update.customer_id)
        return learned.decode() if learned else update.customer_id
    return None


def deliver_update(
    ctx: DeliveryContext,
    update: UserUpdate,
    attempt: int = 1,
    first_failure_at: float | None = None,
    lane: str = keys.LIVE,
) -> str:
    user_id = resolve_identity(ctx.redis, update)
    if user_id is None:
        return dead_letter(
            ctx,
            update,
            "unresolved_identity",
            "event names neither a user nor a customer",
            attempt=attempt,
            first_failure_at=first_failure_at,
            lane=lane,
        )
    hint = update.hint or user_id
    try:
        with ctx.ordering.hold(update, user_id, hint, ctx.client.memory_key(user_id)) as hold:
            if hold is None:
                return "settled"  # another job already sent it, merged with its own
            with ctx.limiter.released_later() as slots:  # released with the outcome
                return _send(ctx, hold, user_id, update, hold.others, attempt, lane, slots)
    except Throttled as exc:
        return put_back(ctx, update, exc.wait, attempt, first_failure_at, lane, "throttled")
    except UserBusy:
        return put_back(ctx, update, USER_BUSY_WAIT_SECONDS, attempt, first_failure_at, lane, "user_busy")
    except Rejected as exc:
        return dead_letter(
            ctx,
            update,
            f"{ctx.client.name}_rejected",
            exc,
            user_id=user_id,
            attempt=attempt,
            first_failure_at=first_failure_at,
            lane=lane,
        )
    except Retryable as exc:
        if exc.status == 429:
            ctx.redis.set(ctx.store.keys.last_429, ctx.clock())
        return retry_or_give_up(ctx, update, user_id, exc, attempt, first_failure_at, lane)


def _send(
    ctx: DeliveryContext,
    hold: Hold,
    user_id: str,
    update: UserUpdate,
    others: list[UserUpdate],
    attempt: int,
    lane: str,
    slots: list[str],
) -> str:
    """One PUT for this update and every other one parked for the user; raises on failure, after
    parking them all again (each one's own job still runs until its outcome is counted). The call
    slots still held (`slots`) are released with the outcome."""
    merged = merge([update, *others])
    if not ctx.client.accepts(merged.standard, merged.custom, merged.tags):
        return _settle_unsent(ctx, hold, update, others, lane, "ignored")
    standard, custom = hold.claim(merged)
    if not ctx.client.accepts(standard, custom, merged.tags):
        log.info(
            "superseded %s %s: user %s already has newer values",
            update.event_type,
            update.event_id,
            user_id,
            extra=fields(update, user_id, lane, attempt, "coalesced"),
        )
        return _settle_unsent(ctx, hold, update, others, lane, "coalesced")
    try:
        memory = ctx.client.send(user_id, standard, custom, merged.tags, hold.memory)
    except Rejected:
        if not others:
            raise
        # Something in the merge was refused: the others go back to their own jobs, this one alone.
        hold.restore(others)
        return _send(ctx, hold, user_id, update, [], attempt, lane, slots)
    except BaseException:
        hold.restore([update, *others])  # all wait for the next try; whatever is counted by then is skipped
        raise
    outcomes = [(update, "delivered"), *((item, "coalesced") for item in others)]
    endpoint, status = getattr(ctx.client, "last_call", None) or (None, None)
    dropped = report_dropped(ctx.client, update, others, user_id, lane, attempt)
    trace = TraceEntry(
        kind="delivery",
        user_id=user_id,
        destination=ctx.store.keys.destination,
        endpoint=endpoint,
        status=status,
        attributes={**standard, **custom},
        tags=merged.tags,
        event_ids=[item.event_id for item in (update, *others)],
        dropped=[{"name": d["attribute"], "reason": d["reason"], "event_id": d["event_id"]} for d in dropped],
    )
    settled = hold.settle(ctx.store, outcomes, memory, slots, trace)[0]
    DELIVERIES.labels("delivered", lane, ctx.client.name).inc()
    if others:
        DELIVERIES.labels("coalesced", lane, ctx.client.name).inc(len(others))
    if settled.counted and settled.accepted_at is not None:
        DELIVERY_LATENCY.observe(max(0.0, ctx.clock() - settled.accepted_at))
    log.info(
        "delivered %s %s to user %s (attempt %d, %d more merged in)",
        update.event_type,
        update.event_id,
        user_id,
        attempt,
        len(others),
        extra=fields(update, user_id, lane, attempt, "delivered"),
    )
    return "delivered"


def _settle_unsent(
    ctx: DeliveryContext, hold: Hold, update: UserUpdate, others: list[UserUpdate], lane: str, outcome: str
) -> str:
    """Nothing to send: `ignored` (nothing the destination stores) or `coalesced` (all superseded)."""
    hold.settle(ctx.store, [(item, outcome) for item in (update, *others)])
    DELIVERIES.labels(outcome, lane, ctx.client.name).inc(1 + len(others))
    return outcome


def on_job_failure(job: Job, connection: Redis, exc_type: type, exc: BaseException, tb: Any) -> None:
    """A job crashed (a bug, bad data) or its worker died. rq runs it again while it has reruns
    left (this callback fires on every failed run); after the last, it is dead-lettered."""
    if job.retries_left:
        log.warning("job %s failed (%s); rq runs it again (%d left)", job.id, exc_type.__name__, job.retries_left)
        return
    ctx = current()
    raw = job.args[0] if job.args and isinstance(job.args[0], dict) else {}
    now = ctx.clock()
    item = DeadLetter(
        id=f"{raw.get('source', 'unknown')}-{raw.get('event_id', job.id)}",
        reason="internal_error",
        source=str(raw.get("source", "unknown")),
        event_type=raw.get("event_type"),
        event_id=raw.get("event_id"),
        event_time=raw.get("event_time"),
        message=f"{exc_type.__name__}: {exc}"[:500],
        update=raw or None,
        attempts=job.args[1] if len(job.args) > 1 else 1,
        first_failure_at=now,
        last_failure_at=now,
    )
    lane = keys.REPLAY if job.origin == ctx.store.keys.queue_name(keys.REPLAY) else keys.LIVE
    return_taken(ctx.redis, ctx.store.keys, lane, job.id)  # the jobs it took wait for other workers
    if not ctx.store.dead_letter(item):
        # Its event was settled before the failure (rq itself can fail a finished job): nothing to keep.
        log.warning("job %s failed (%s) after its event was settled", job.id, exc_type.__name__)
        return
    DELIVERIES.labels("dead_lettered", lane, ctx.client.name).inc()
    log.error("dead-lettered job %s after an unexpected %s", job.id, exc_type.__name__)
