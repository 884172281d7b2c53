"""The delivery job: everything pending for one user at one destination, then each event's outcome.

A worker process serves one destination (its queues, ledger, dead-letter queue and limiter). Intake
merges each update into its user's pending state and queues the user once (service/store/ledger.py);
a job takes the state (workers/ordering.py) and sends one merged update. Each event merged in ends in
exactly one of: delivered (one per send), coalesced (merged into it or superseded), ignored (nothing in
it for this destination) or dead-lettered (a value the destination refused, isolated: the events
carrying it are dead-lettered, the rest delivered; or retries exhausted). A failed send keeps the state
in hand for the retry job (workers/delivery/outcomes.py). Outcomes are counted once per event even
when a job runs twice (a killed worker's job is re-run by rq); updates are idempotent.

`deliver` and `on_job_failure` are what rq runs, by dotted name (service/store/jobs.py). A job queued
before the upgrade carries one event's whole update: it is parked in its user's state and the user
delivered (`deliver_update`).
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
from service.ops.metrics import DELIVERIES
from service.store import keys
from service.store.jobs import DELIVERY_JOB_TIMEOUT, JOB_END_SECONDS
from service.store.ledger_state import HINT_FIELD, identity_of, source_and_hint
from service.store.ledger_user import EventOutcome
from workers.delivery.batch import return_taken, run_batch
from workers.delivery.context import Deferred, DeliveryContext, bound, calls_until, current, job_in_hand
from workers.delivery.group import deliver_group
from workers.delivery.outcomes import dead_letter_legacy, put_back, retry_or_give_up
from workers.delivery.send import send_user, settle_all
from workers.ordering import UserBusy
from workers.ratelimit import Throttled

log = logging.getLogger(__name__)
USER_BUSY_WAIT_SECONDS = 1.0


def deliver(
    payload: str | dict[str, Any], attempt: int = 1, first_failure_at: float | None = None, lane: str = keys.LIVE
) -> str:
    """rq entry point (referenced by name from service.store.jobs): this job's user, then the jobs
    queued behind it (workers/delivery/batch.py)."""
    ctx = current()
    started = time.monotonic()
    deadline = started + DELIVERY_JOB_TIMEOUT - JOB_END_SECONDS
    with calls_until(deadline):
        outcome = _deliver_payload(ctx, payload, attempt, first_failure_at, lane)
    running = get_current_job()
    if running is None:
        return outcome
    if outcome == "throttled":  # the queue behind would be too; what a killed run of this job took waits there
        return_taken(ctx.redis, ctx.store.keys, lane, running.id)
        return outcome

    def run(job_id: str, args: list[Any], hint: bytes | None) -> str:
        with calls_until(deadline):  # in the batch's threads too
            return _run_taken(ctx, job_id, args, hint)

    def run_group(jobs: list[tuple[str, list[Any], bytes]]) -> list[str]:
        with calls_until(deadline):
            return deliver_group(ctx, jobs)

    run_batch(ctx.redis, ctx.store.keys, lane, running.id, run, started=started, run_group=run_group)
    return outcome


def _deliver_payload(
    ctx: DeliveryContext,
    payload: str | dict[str, Any],
    attempt: int = 1,
    first_failure_at: float | None = None,
    lane: str = keys.LIVE,
    hint: bytes | None = None,
) -> str:
    """`hint`: the user's hint field when already read (workers/delivery/batch.py), else None."""
    if isinstance(payload, dict) and "event_id" in payload:  # a per-event job from before the upgrade
        return deliver_update(ctx, UserUpdate.from_dict(payload), attempt, first_failure_at, lane)
    user = source_and_hint(hint) if hint is not None and isinstance(payload, str) else whose(ctx, payload)
    if user is None:
        return "settled"  # nothing pending or in hand: another job delivered it all
    return deliver_user(ctx, *user, attempt, first_failure_at, lane)


def whose(ctx: DeliveryContext, payload: str | dict[str, Any]) -> tuple[str, str] | None:
    """The (source, hint) a user's job is for: read from the user's state or in-hand state (the job
    carries the user's reference, keys.user_ref)."""
    if isinstance(payload, dict):
        return str(payload["source"]), str(payload["hint"])
    own = ctx.store.keys
    with ctx.redis.pipeline(transaction=False) as pipe:
        pipe.hget(own.user_state_of(payload), HINT_FIELD)
        pipe.hget(own.in_hand_of(payload), HINT_FIELD)
        pending, in_hand = pipe.execute()
    return source_and_hint(pending or in_hand)


def _run_taken(ctx: DeliveryContext, job_id: str, args: list[Any], hint: bytes | None = None) -> str:
    with bound(job_in_hand, job_id):
        return _deliver_payload(ctx, args[0], *args[1:], hint=hint)


def resolve_user(redis: Redis, source: str, hint: str) -> str:
    """The user id named by the events, else the one learned for their customer (intake learns it from
    events carrying both), else the customer id itself."""
    user_id, customer_id = identity_of(hint)
    if user_id:
        return user_id
    learned = redis.hget(keys.customer_map(source), customer_id or "")
    return learned.decode() if learned else str(customer_id)


def deliver_update(
    ctx: DeliveryContext,
    update: UserUpdate,
    attempt: int = 1,
    first_failure_at: float | None = None,
    lane: str = keys.LIVE,
) -> str:
    """One event's update (a job from before the upgrade): parked in its user's state unless counted or
    pending already, then the user delivered."""
    hint = update.hint
    if hint is None:
        return dead_letter_legacy(ctx, update, "unresolved_identity", "event names neither a user nor a customer")
    ctx.ordering.park(update, hint)
    return deliver_user(ctx, update.source, hint, attempt, first_failure_at, lane)


def deliver_user(
    ctx: DeliveryContext,
    source: str,
    hint: str,
    attempt: int = 1,
    first_failure_at: float | None = None,
    lane: str = keys.LIVE,
) -> str:
    user_id = resolve_user(ctx.redis, source, hint)
    try:
        with ctx.ordering.hold(source, hint, user_id, ctx.client.memory_key(user_id)) as hold:
            if not hold.state.events:
                hold.settle(ctx.store, [])  # another job sent it all already
                return "settled"
            try:
                with ctx.limiter.released_later() as slots:  # released with the outcome
                    return send_user(ctx, hold, attempt, lane, slots)
            except Throttled as exc:
                return put_back(ctx, source, hint, exc.wait, attempt, first_failure_at, lane, "throttled")
            except Retryable as exc:
                if exc.status == 429:
                    ctx.redis.set(ctx.store.keys.last_429, ctx.clock())
                return retry_or_give_up(ctx, hold, exc, attempt, first_failure_at, lane)
    except UserBusy:
        return put_back(ctx, source, hint, USER_BUSY_WAIT_SECONDS, attempt, first_failure_at, lane, "user_busy")
    except Deferred:
        return put_back(ctx, source, hint, 0.0, attempt, first_failure_at, lane, "deferred")


def on_job_failure(job: Job, connection: Redis, exc_type: type, exc: BaseException, tb: Any) -> None:
    """A job crashed (a bug, bad data) or its worker died. rq runs it again while it has reruns
    left (this callback fires on every failed run); after the last, what it had in hand is
    dead-lettered."""
    if job.retries_left:
        log.warning("job %s failed (%s); rq runs it again (%d left)", job.id, exc_type.__name__, job.retries_left)
        return
    ctx = current()
    first = job.args[0] if job.args else None
    raw = first if isinstance(first, dict) else {}
    lane = next((lane for lane in keys.LANES if job.origin == ctx.store.keys.queue_name(lane)), keys.LIVE)
    return_taken(ctx.redis, ctx.store.keys, lane, job.id)  # the jobs it took wait for other workers
    message = f"{exc_type.__name__}: {exc}"[:500]
    attempts = job.args[1] if len(job.args) > 1 and isinstance(job.args[1], int) else 1
    if isinstance(first, str) or ("hint" in raw and "source" in raw and "event_id" not in raw):
        user = whose(ctx, first) if isinstance(first, (str, dict)) else None
        if user is None:
            log.warning("job %s failed (%s) with nothing pending for its user", job.id, exc_type.__name__)
            return
        _dead_letter_user(ctx, user, job.id, exc_type, message, attempts, lane)
        return
    # A job from before the upgrade whose event it parked in its user's state (Ordering.park): counted with
    # the user's events, as they are; counted apart, it would be counted again when the user is delivered.
    parked = _parked_user(ctx, raw)
    if parked is not None:
        _dead_letter_user(ctx, parked, job.id, exc_type, message, attempts, lane)
        return
    now = ctx.clock()
    item = DeadLetter(
        id=f"{raw.get('source', 'unknown')}-{raw.get('event_id', job.id)}",
        reason="internal_error",
        source=str(raw.get("source", "unknown")),
        event_type=raw.get("event_type"),
        event_id=raw.get("event_id"),
        event_time=raw.get("event_time"),
        message=message,
        update=raw or None,
        attempts=attempts,
        first_failure_at=now,
        last_failure_at=now,
    )
    if not ctx.store.dead_letter(item):
        # Its event was settled before the failure (rq itself can fail a finished job): nothing to keep.
        log.warning("job %s failed (%s) after its event was settled", job.id, exc_type.__name__)
        return
    DELIVERIES.labels("dead_lettered", lane, ctx.client.name).inc()
    log.error("dead-lettered job %s after an unexpected %s", job.id, exc_type.__name__)


def _dead_letter_user(
    ctx: DeliveryContext, user: tuple[str, str], job_id: str, exc_type: type, message: str, attempts: int, lane: str
) -> None:
    """Everything pending for the user, dead-lettered (internal_error) under its lease."""
    user_id = resolve_user(ctx.redis, *user)
    with ctx.ordering.hold(*user, user_id) as hold:
        count = settle_all(ctx, hold, "internal_error", message, attempts, None, lane)
    log.error("dead-lettered %d events of job %s after an unexpected %s", count, job_id, exc_type.__name__)


def _parked_user(ctx: DeliveryContext, raw: dict[str, Any]) -> tuple[str, str] | None:
    """The (source, hint) of a per-event job's update when its event is parked in its user's state (or
    in hand); None otherwise (never parked, or counted already)."""
    try:
        update = UserUpdate.from_dict(raw)
    except TypeError:  # not an update's fields
        return None
    hint = update.hint
    if hint is None or not ctx.ordering.pending(update.source, hint, update.event_id):
        return None
    return update.source, hint


__all__ = ["EventOutcome", "Rejected", "deliver", "deliver_update", "deliver_user", "on_job_failure"]
