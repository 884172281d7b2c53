"""Sending one user's in-hand state: one merged update, and when the destination refuses it, the
refused values isolated by halving the events carrying them, so the rest is delivered and only the
events carrying a refused value are dead-lettered. Then each event's outcome, counted in one step."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from service.core.dead_letter import DeadLetter
from service.core.update import UserUpdate
from service.destinations.base import DeliveryError, Rejected
from service.destinations.dropped import DroppedValue
from service.destinations.http_api import BEFORE_CALL
from service.ops.metrics import DELIVERIES, DELIVERY_LATENCY
from service.store.ledger import Settled
from service.store.ledger_user import EventOutcome
from service.store.trace import TraceEntry
from workers.delivery.context import DeliveryContext, bound, check_time_left
from workers.delivery.dropped import report_dropped
from workers.ordering import Hold, UserBusy

log = logging.getLogger(__name__)


@dataclass
class Sent:
    """A user's delivery sent, its outcomes still to count (Hold.settle, or Ordering.settle_many)."""

    outcomes: list[EventOutcome]
    memory: str | None
    trace: TraceEntry | None
    refused: dict[str, Rejected]
    delivered: str | None


def send_user(ctx: DeliveryContext, hold: Hold, attempt: int, lane: str, slots: list[str]) -> str:
    """Raises Retryable / Throttled with the state left in hand (a retry or the next job sends it)."""
    nothing = prepare(ctx, hold, lane)
    if nothing is not None:
        return nothing
    booking = ctx.limiter.booking()  # the call's slot, booked with the claim: a round trip less
    try:
        allowed, [booked] = hold.claim(hold.state, booking)
    except RedisError:  # the booking may have run: its slot's lease, and those it was to release, let go
        ctx.limiter.unanswered(booking)
        raise
    ctx.limiter.booked(booking, booked)  # held (released with the outcome) even if no call comes
    sent = send_allowed(ctx, hold, allowed, attempt, lane)
    if isinstance(sent, str):
        return sent
    settled = hold.settle(ctx.store, sent.outcomes, sent.memory, slots, sent.trace) or []
    return report(ctx, hold, sent, settled, attempt, lane)


def prepare(ctx: DeliveryContext, hold: Hold, lane: str) -> str | None:
    """None when the state in hand has something for the destination; else its outcome, counted."""
    state = hold.state
    all_standard = {k: v for k, (v, _, _) in state.standard.items()}
    all_custom = {k: v for k, (v, _, _) in state.custom.items()}
    if not ctx.client.accepts(all_standard, all_custom, state.tag_list()):
        return _settle_same(ctx, hold, "ignored", lane)
    return None


def send_allowed(
    ctx: DeliveryContext, hold: Hold, allowed: set[str] | None, attempt: int, lane: str, applied_by: str | None = None
) -> Sent | str:
    """Send what the claim allowed (`allowed`: None when the lease was lost: UserBusy), isolating refused
    values. Returns what to count, or the outcome when nothing was to be sent (counted then).
    `applied_by`: the call that applied this whole update already (a mass update): nothing is sent."""
    if allowed is None:  # pragma: no cover - our own lease expired under us
        raise UserBusy(f"lease on user {hold.user_id} was lost")
    state = hold.state
    client = ctx.client
    standard = {k: (v, c) for k, (v, _, c) in state.standard.items() if k in allowed}
    custom = {k: (v, c) for k, (v, _, c) in state.custom.items() if k in allowed}
    carriers = sorted({c for _, c in (*standard.values(), *custom.values())} | {c for _, c in state.tags.values()})
    carriers = [c for c in carriers if c in state.events]
    if not carriers or not client.accepts(
        {k: v for k, (v, _) in standard.items()}, {k: v for k, (v, _) in custom.items()}, state.tag_list()
    ):
        return _settle_same(ctx, hold, "coalesced", lane)
    refused: dict[str, Rejected] = {}
    sent: dict[str, Any] = {}
    kept_as_sent = True  # the destination keeps the update's own fields (else: its body, last_sent; no tags)
    went_out = False  # a call went through (it may carry tags alone)
    left_out: list[DroppedValue] = []  # by every call that went through (a halving makes several)
    memory = hold.memory

    def send(part: list[str]) -> None:
        nonlocal memory, went_out, kept_as_sent
        chosen = set(part)
        std = {k: v for k, (v, c) in standard.items() if c in chosen}
        cus = {k: v for k, (v, c) in custom.items() if c in chosen}
        tags = state.tag_list(chosen)
        if not client.accepts(std, cus, tags):
            return
        try:
            if applied_by is None:
                changed = client.send(hold.user_id, std, cus, tags, memory)
                memory = memory if changed is None else changed  # None: as it was, for the next call too
                left_out.extend(v for v in getattr(client, "last_dropped", ()) if v not in left_out)
            body = getattr(client, "last_sent", None) if applied_by is None else None
            kept_as_sent = kept_as_sent and body is None
            sent.update(body if body is not None else {**std, **cus})
            went_out = True
        except Rejected as exc:
            if len(part) == 1:
                refused[part[0]] = exc
                return
            send(part[: len(part) // 2])
            send(part[len(part) // 2 :])

    with bound(BEFORE_CALL, lambda: _before_call(ctx, hold)):
        send(carriers)
    updates = [state.update_of(hold.source, hold.hint, c) for c in carriers if c not in refused]
    delivered = max(updates, key=lambda u: (u.event_time, u.event_id)).event_id if went_out and updates else None
    outcomes = []
    for event_id in state.events:
        if event_id in refused:
            item = _item(ctx, hold, event_id, f"{client.name}_rejected", refused[event_id], attempt, None)
            outcomes.append(EventOutcome(event_id, "dead_lettered", item))
        else:
            outcomes.append(EventOutcome(event_id, "delivered" if event_id == delivered else "coalesced"))
    dropped = report_dropped(left_out, updates[0], updates[1:], hold.user_id, lane, attempt) if updates else []
    endpoint, status = (applied_by, 200) if applied_by else getattr(client, "last_call", None) or (None, None)
    not_sent = {d.attribute for d in left_out}
    trace = TraceEntry(
        kind="delivery",
        user_id=hold.user_id,
        destination=ctx.store.keys.destination,
        endpoint=endpoint,
        status=status,
        attributes={name: value for name, value in sent.items() if name not in not_sent},
        tags=state.tag_list({c for c in carriers if c not in refused}) if kept_as_sent else [],
        event_ids=[o.event_id for o in outcomes if o.outcome != "dead_lettered"],
        dropped=[{"name": d["attribute"], "reason": d["reason"], "event_id": d["event_id"]} for d in dropped],
    )
    return Sent(outcomes, memory, trace if went_out else None, refused, delivered)


def _before_call(ctx: DeliveryContext, hold: Hold) -> None:
    """Each call of a user's delivery (BEFORE_CALL): made on a lease that surely runs, within its job's time."""
    hold.check_lease()
    check_time_left(ctx)


def report(ctx: DeliveryContext, hold: Hold, sent: Sent, settled: list[Settled], attempt: int, lane: str) -> str:
    """Metrics and logs of a user's delivery once counted (`settled`: per event, as the ledger said)."""
    client = ctx.client
    outcomes, refused, delivered = sent.outcomes, sent.refused, sent.delivered
    for outcome, counted in zip(outcomes, settled, strict=False):
        if counted.counted:
            DELIVERIES.labels(outcome.outcome, lane, client.name).inc()
            if outcome.outcome == "delivered" and counted.accepted_at is not None:
                DELIVERY_LATENCY.observe(max(0.0, ctx.clock() - counted.accepted_at))
    for event_id, exc in refused.items():
        log.error(
            "dead-lettered %s for user %s (%s_rejected): %s",
            event_id,
            hold.user_id,
            client.name,
            exc,
            extra={**event_fields(hold, event_id, lane, attempt, "dead_lettered"), "status": exc.status},
        )
    if delivered and log.isEnabledFor(logging.INFO):
        log.info(
            "delivered %s to user %s (attempt %d, %d more merged in)",
            delivered,
            hold.user_id,
            attempt,
            len(outcomes) - len(refused) - 1,
            extra=event_fields(hold, delivered, lane, attempt, "delivered"),
        )
    return "delivered" if delivered else ("dead_lettered" if refused else "coalesced")


def event_fields(hold: Hold, event_id: str, lane: str, attempt: int, outcome: str) -> dict[str, object]:
    """A log line's fields for one event of the user's delivery."""
    event = hold.state.events.get(event_id)
    return {
        "source": hold.source,
        "event_id": event_id,
        "event_type": event.event_type if event else None,
        "user_id": hold.user_id,
        "lane": lane,
        "attempt": attempt,
        "outcome": outcome,
    }


def _settle_same(ctx: DeliveryContext, hold: Hold, outcome: str, lane: str) -> str:
    """Nothing to send: `ignored` (nothing the destination stores) or `coalesced` (all superseded)."""
    # The memory as it was: one kept for good is written again (Hold.settlement), whatever the events were.
    hold.settle(ctx.store, [EventOutcome(event_id, outcome) for event_id in hold.state.events], hold.memory)
    DELIVERIES.labels(outcome, lane, ctx.client.name).inc(len(hold.state.events))
    return outcome


def _item(
    ctx: DeliveryContext,
    hold: Hold,
    event_id: str,
    reason: str,
    error: str | DeliveryError,
    attempt: int,
    first_failure_at: float | None,
) -> DeadLetter:
    update: UserUpdate = hold.state.update_of(hold.source, hold.hint, event_id)
    now = ctx.clock()
    status, body = (error.status, error.body) if isinstance(error, DeliveryError) else (None, None)
    return DeadLetter(
        id=f"{hold.source}-{event_id}",
        reason=reason,
        source=hold.source,
        event_type=update.event_type,
        event_id=event_id,
        event_time=update.event_time,
        message=str(error),
        update=update.to_dict(),
        user_id=hold.user_id,
        attempts=attempt,
        first_failure_at=first_failure_at if first_failure_at is not None else now,
        last_failure_at=now,
        last_status=status,
        last_response=body,
    )


def settle_all(
    ctx: DeliveryContext,
    hold: Hold,
    reason: str,
    error: str | DeliveryError,
    attempt: int,
    first_failure_at: float | None,
    lane: str,
) -> int:
    """Dead-letter every event carrying a value in hand (the rest were superseded: coalesced)."""
    carriers = hold.state.carriers()
    outcomes = [
        EventOutcome(e, "dead_lettered", _item(ctx, hold, e, reason, error, attempt, first_failure_at))
        if e in carriers
        else EventOutcome(e, "coalesced")
        for e in hold.state.events
    ]
    hold.settle(ctx.store, outcomes)
    DELIVERIES.labels("dead_lettered", lane, ctx.client.name).inc(len(carriers))
    log.error("dead-lettered %d events for user %s (%s): %s", len(carriers), hold.user_id, reason, error)
    return len(carriers)
