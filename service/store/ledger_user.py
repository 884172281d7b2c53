"""What counting one user's delivery takes (SETTLE_USER_SCRIPT's KEYS and ARGV), and the dead-letter
item of an update naming no user."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from service.core.dead_letter import DeadLetter
from service.core.update import UserUpdate
from service.store import keys
from service.store.trace import TraceEntry, dead_letter_entry, trace_args

if TYPE_CHECKING:
    from service.store.ledger import Store


@dataclass(frozen=True)
class EventOutcome:
    event_id: str
    outcome: str  # delivered | coalesced | ignored | dead_lettered
    item: DeadLetter | None = None  # when dead_lettered


@dataclass
class SettleUser:
    source: str
    hint: str
    outcomes: list[EventOutcome]
    lease: tuple[str, str] | None = None  # lock key, token
    memory: tuple[str, str, int] | None = None  # key, value ('' to forget), ttl
    slots: list[str] = field(default_factory=list)
    trace: TraceEntry | None = None

    def trace_user(self) -> str:
        """Whose trace the delivery and the dead letters go to ('' for none)."""
        if self.trace is not None:
            return self.trace.user_id
        return next((o.item.user_id for o in self.outcomes if o.item and o.item.user_id), "")

    def script_keys(self, store: Store) -> list[str]:
        own = store.keys
        lock = self.lease[0] if self.lease else own.ledger  # keys are passed either way; unused when not needed
        user = self.trace_user()
        trace_key = own.trace(user) if store.trace.enabled and user else ""
        return [
            *(own.ledger, own.last_delivery, lock, self.memory[0] if self.memory else own.ledger),
            *(own.limiter_in_flight, trace_key or own.ledger),
            *(own.in_hand(self.source, self.hint), own.user_state(self.source, self.hint), *own.dlq),
            *(own.pending(lane) for lane in keys.LANES),
        ]

    def script_args(self, store: Store) -> list[Any]:
        _, trace_entry = trace_args(store.trace, store.keys, self.trace)
        memory_change = ""
        if self.memory is not None:
            memory_change = f"set:{self.memory[1]}" if self.memory[1] else "del"
        max_items, cutoff = store.retention.args()
        args: list[Any] = [
            *(self.lease[1] if self.lease else "", time.time(), memory_change, self.memory[2] if self.memory else 0),
            *(" ".join(self.slots), trace_entry, store.trace.per_user, store.trace.ttl_seconds),
            *(keys.pending_ref(self.source, self.hint), store.keys.outcome(self.source, "")),
            *(store.dedup_ttl, f"{self.source}:", max_items, cutoff),
        ]
        for outcome in self.outcomes:
            item = replace(outcome.item, destination=store.keys.destination) if outcome.item else None
            entry = dead_letter_entry(item, outcome.event_id) if item else None
            args += [
                outcome.event_id,
                outcome.outcome,
                item.reason if item else "",
                item.id if item else "",
                item.to_json() if item else "",
                trace_args(store.trace, store.keys, entry)[1],
            ]
        return args


def unresolved(update: UserUpdate) -> DeadLetter:
    now = time.time()
    return DeadLetter(
        id=f"{update.source}-{update.event_id}",
        reason="unresolved_identity",
        source=update.source,
        event_type=update.event_type,
        event_id=update.event_id,
        event_time=update.event_time,
        message="event names neither a user nor a customer",
        update=update.to_dict(),
        attempts=1,
        first_failure_at=now,
        last_failure_at=now,
    )
