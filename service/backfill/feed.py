"""One event read back from a provider, taken the way a webhook is after its signature check:
the source's envelope and object schemas, the mapping, then one atomic store write (dedup:
an event accepted within RELAY_DEDUP_TTL_SECONDS is a duplicate, never queued twice; one older
than that memory is taken again: events.dedup_note), on the backfill lane.
Last-writer-wins by event time is held at delivery, per attribute: an old event read back now
never overwrites newer state. An event that does not fit is dead-lettered, as at intake."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from marshmallow import ValidationError

from service.config import Settings
from service.core.update import UserUpdate
from service.intake import conflict_item, invalid_item, named_user, read_event
from service.sources.base import Envelope
from service.sources.registry import build_source
from service.store import keys
from service.store.customer_map import IdentityConflict
from service.store.ledger import Store
from service.store.ledger_dedup import accepted_before, ignored_namespace

OUTCOMES = ("accepted", "duplicate", "ignored", "invalid")


@dataclass
class Tally:
    """What a run read and what became of it."""

    read: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    missing: int = 0  # reconcile: ids the relay never received
    started: float = field(default_factory=time.monotonic)

    def add(self, outcome: str) -> None:
        self.read += 1
        self.counts[outcome] += 1

    def as_dict(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {
            "read": self.read,
            **self.counts,
            "missing": self.missing,
            "seconds": round(elapsed, 3),
            "per_second": round(self.read / elapsed, 1),
        }


class Feeder:
    """Takes provider objects (events, or updates built from snapshots) into the relay's store."""

    def __init__(self, settings: Settings, store: Store, source: str, *, dry_run: bool = False) -> None:
        self.settings = settings
        self.store = store
        self.source_name = source
        self.source = build_source(source, settings.source(source))
        self.dry_run = dry_run
        self.tally = Tally()

    def event(self, payload: dict[str, Any]) -> str:
        """Feed one event as the provider's API gave it; its outcome (one of OUTCOMES)."""
        return self.events_together([payload])[0]

    def events_together(self, payloads: list[dict[str, Any]]) -> list[str]:
        """Feed events of one user read together (a sync's customer and its subscription), accepted in
        one transaction so that no delivery goes out between them; their outcomes."""
        read = [self._read(payload) for payload in payloads]
        answers = iter(self._accept([r for r in read if isinstance(r, UserUpdate)]))
        outcomes = [next(answers) if isinstance(r, UserUpdate) else r for r in read]
        for outcome in outcomes:
            self.tally.add(outcome)
        return outcomes

    def identities(self, payloads: list[dict[str, Any]]) -> list[tuple[str, str]]:
        """The (customer, user) each event names that accepting it could learn (service.store.customer_map),
        in the order given: events naming both, not accepted before (the accept script checks and learns
        only those), nothing written."""
        named = []
        for payload in payloads:
            try:
                _, update = self._read_event(payload)
            except ValidationError:
                continue
            if update is not None and update.customer_id and update.user_id:
                named.append(update)
        seen = accepted_before(self.store.redis, self.source_name, [u.event_id for u in named], self.store.dedup_ttl)
        return [(u.customer_id or "", u.user_id or "") for u, known in zip(named, seen, strict=True) if not known]

    def _read_event(self, payload: dict[str, Any]) -> tuple[Envelope, UserUpdate | None]:
        return read_event(
            self.source,
            self.settings.mapping,
            self.settings.identity_key,
            payload,
            {},
            max_clock_skew=self.settings.max_clock_skew_seconds,
        )

    def _read(self, payload: dict[str, Any]) -> str | UserUpdate:
        """The event's update, or its outcome when it has none to accept."""
        try:
            envelope, update = self._read_event(payload)
        except ValidationError as exc:
            return "invalid" if self.dry_run or self._reject(payload, exc) else "duplicate"
        return self._ignore(envelope.event_id) if update is None else update

    def _accept(self, updates: list[UserUpdate]) -> list[str]:
        if not updates:
            return []
        if self.dry_run:
            seen = accepted_before(
                self.store.redis, self.source_name, [u.event_id for u in updates], self.store.dedup_ttl
            )
            would = ["invalid" if u.hint is None else "accepted" for u in updates]  # as _outcome: naming no one
            return ["duplicate" if s else outcome for s, outcome in zip(seen, would, strict=True)]
        if len(updates) == 1:
            try:
                answers: list[bool | IdentityConflict] = [self.store.accept(updates[0], lane=keys.BACKFILL)]
            except IdentityConflict as exc:
                answers = [exc]
        else:
            answers = self.store.accept_together(updates, lane=keys.BACKFILL)
        return [self._outcome(update, answer) for update, answer in zip(updates, answers, strict=True)]

    def _outcome(self, update: UserUpdate, answer: bool | IdentityConflict) -> str:
        if isinstance(answer, IdentityConflict):  # dead-lettered, as intake does
            return "invalid" if self.store.reject(conflict_item(update, answer), update.event_id) else "duplicate"
        if update.hint is None:  # naming no user and no customer, the store kept it in the dead-letter queue
            return "invalid" if answer else "duplicate"
        return "accepted" if answer else "duplicate"

    def _ignore(self, event_id: str) -> str:
        if self.dry_run:
            source = ignored_namespace(self.source_name)  # where Store.ignore remembers it
            [seen] = accepted_before(self.store.redis, source, [event_id], self.store.dedup_ttl)
            return "duplicate" if seen else "ignored"
        return "ignored" if self.store.ignore(self.source_name, event_id) else "duplicate"

    def _reject(self, payload: dict[str, Any], exc: ValidationError) -> bool:
        described = self.source.describe(payload, {})
        event_id = described.event_id or f"unknown-{int(time.time() * 1000)}"
        message = "payload read back from the provider's API does not fit the schema"
        user_id = named_user(payload, self.settings.identity_key)
        item = invalid_item(self.source_name, event_id, event_id, described, payload, exc, message, user_id=user_id)
        return self.store.reject(item, event_id)
