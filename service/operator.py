"""Dead-letter operations shared by the admin API and `relay dlq`: plain functions, no HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from marshmallow import ValidationError

from service.config import Settings
from service.core.dead_letter import DlqFilter
from service.core.update import UserUpdate
from service.intake import read_event
from service.sources.registry import SOURCES, build_source
from service.store.dlq import DeadLetterQueue
from service.store.ledger import Store

# Outcomes of replaying one item.
REPLAYED = "replayed"  # its update is queued on the replay lane
GONE = "gone"  # deleted or replayed by someone else meanwhile
STILL_INVALID = "still_invalid"  # an invalid payload that the current schema still refuses
NOT_MAPPED = "not_mapped"  # an invalid payload that is now valid, but its type is no longer mapped
UNRESOLVED = "unresolved_identity"  # its update names no user and no customer: there is no one to deliver it to
# Why an item was not replayed, in words (the admin API's 409, `relay dlq replay`).
REFUSALS = {
    STILL_INVALID: "the payload still does not fit the schema",
    NOT_MAPPED: "its event type is not mapped",
    UNRESOLVED: "its update names no user and no customer: there is no one to deliver it to",
}


@dataclass(frozen=True)
class Replay:
    """What replaying one item did: an outcome above, and for STILL_INVALID the schema's messages."""

    outcome: str
    details: dict[str, Any] | None = None


@dataclass(frozen=True)
class Operator:
    store: Store
    settings: Settings  # the mapping and identity key an invalid payload is read with again

    @property
    def dlq(self) -> DeadLetterQueue:
        return self.store.dlq()

    def replay(self, item: dict[str, Any]) -> str:
        """Queue the item's update on the replay lane, keeping its event time (so LWW still applies);
        returns the outcome (see `replay_explained`)."""
        return self.replay_explained(item).outcome

    def replay_explained(self, item: dict[str, Any]) -> Replay:
        """`replay`, with the schema's messages when the payload still does not fit.

        An invalid payload is normalized again first: after a fix to the schema or the mapping,
        replaying is how the events refused meanwhile get delivered.
        """
        if item.get("update") is not None:
            update = UserUpdate.from_dict(item["update"])
        else:
            if item.get("source") not in SOURCES:
                return Replay(STILL_INVALID, {"source": [f"Unknown source {item.get('source')!r}."]})
            source = build_source(item["source"], self.settings.source(item["source"]))
            # The event id a transport carried in a header (Standard Webhooks) is kept as event_id.
            headers = {"webhook-id": item.get("event_id") or ""}
            try:
                _, update = read_event(
                    source,
                    self.settings.mapping,
                    self.settings.identity_key,
                    item.get("event"),
                    headers,
                    self.settings.trusted_identity_fields,
                    max_clock_skew=self.settings.max_clock_skew_seconds,
                )
            except ValidationError as exc:
                return Replay(STILL_INVALID, exc.normalized_messages())
            if update is None:
                return Replay(NOT_MAPPED)
        if update.hint is None:  # kept for an operator, who can only delete it: replay would invent a user
            return Replay(UNRESOLVED)
        return Replay(REPLAYED if self.store.replay(item["id"], update) else GONE)

    def replay_matching(self, flt: DlqFilter, *, dry_run: bool, limit: int | None = None) -> dict[str, Any]:
        """Replay the items matching the filter (up to `limit`, oldest first) as the scan reads them,
        a page at a time; a dry run only counts (DeadLetterQueue.count)."""
        if dry_run:
            return {**self._counted(flt, limit), "dry_run": True, "outcomes": {}}
        outcomes: dict[str, int] = {}
        matched = selected = 0
        for item in self.dlq.scan(flt, once_each=True):  # an item replayed may fail again meanwhile
            matched += 1
            if limit is None or selected < limit:
                selected += 1
                outcome = self.replay(item)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
        return {"matched": matched, "selected": selected, "dry_run": False, "outcomes": outcomes}

    def purge_matching(self, flt: DlqFilter, *, dry_run: bool, limit: int | None = None) -> dict[str, Any]:
        """Delete the items matching the filter (up to `limit`, oldest first) as the scan reads them."""
        if dry_run:
            return {**self._counted(flt, limit), "dry_run": True, "deleted": 0}
        matched = selected = deleted = 0
        for item in self.dlq.scan(flt):
            matched += 1
            if limit is None or selected < limit:
                selected += 1
                deleted += self.dlq.delete(item["id"])
        return {"matched": matched, "selected": selected, "dry_run": False, "deleted": deleted}

    def _counted(self, flt: DlqFilter, limit: int | None) -> dict[str, int]:
        matched = self.dlq.count(flt)
        return {"matched": matched, "selected": matched if limit is None else min(limit, matched)}
