"""Dead-letter operations shared by the admin API and `relay dlq`: plain functions, no HTTP."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import secrets
from dataclasses import asdict, dataclass
from typing import Any

from marshmallow import ValidationError

from service.config import Settings
from service.core.dead_letter import DlqFilter
from service.core.errors import InvalidRequest
from service.core.update import UserUpdate
from service.intake import read_event
from service.sources.registry import SOURCES, build_source
from service.store.dlq import DeadLetterQueue, Position
from service.store.ledger import Store

# Outcomes of replaying one item.
REPLAYED = "replayed"  # its update is queued on the replay lane
GONE = "gone"  # deleted or replayed by someone else meanwhile
STILL_INVALID = "still_invalid"  # an invalid payload that the current schema still refuses
NOT_MAPPED = "not_mapped"  # an invalid payload that is now valid, but its type is no longer mapped or it sends nothing
UNRESOLVED = "unresolved_identity"  # its update names no user and no customer: there is no one to deliver it to
# Why an item was not replayed, in words (the admin API's 409, `relay dlq replay`).
REFUSALS = {
    STILL_INVALID: "the payload still does not fit the schema",
    NOT_MAPPED: "its event type is not mapped, or it has nothing to send (e.g. a refund not yet approved)",
    UNRESOLVED: "its update names no user and no customer: there is no one to deliver it to",
}


@dataclass(frozen=True)
class Replay:
    """What replaying one item did: an outcome above, and for STILL_INVALID the schema's messages."""

    outcome: str
    details: dict[str, Any] | None = None


BATCH_MAX = 10_000  # items one batch of a bulk replay may take (`replay_batch`)
_OPERATION = re.compile("[0-9a-f]{16}")  # secrets.token_hex(8)
# A cursor `encode` makes is ~130 characters; one longer is not read (JSON nested past Python's
# recursion limit would be a RecursionError, a 500).
_CURSOR_MAX = 256


@dataclass(frozen=True)
class Cursor:
    """Where a bulk replay in batches stands, given to its caller between batches (opaque to it):
    the operation (naming its memory of the ids it gave), the filters it was made for (a digest), and
    the scan's position."""

    operation: str
    filters: str
    position: Position

    def encode(self) -> str:
        text = json.dumps([self.operation, self.filters, self.position.end, self.position.after])
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """InvalidRequest for anything `encode` did not make."""
        try:
            if len(text) > _CURSOR_MAX:
                raise ValueError(text)
            operation, filters, end, after = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            scores = [end] if after is None else [end, after]
            # Finite numbers only: not a bool, nor a string float() would read (an int past a float's
            # range: OverflowError).
            if not all(type(score) in (int, float) and math.isfinite(score) for score in scores):
                raise ValueError(text)
            if not (isinstance(operation, str) and _OPERATION.fullmatch(operation) and isinstance(filters, str)):
                raise ValueError(text)
            position = Position(float(end), None if after is None else float(after))
        except (ValueError, TypeError, IndexError, OverflowError):  # binascii.Error, UnicodeDecodeError: ValueErrors
            raise InvalidRequest("cursor: not one this API gave (send the last answer's `cursor` as it is)") from None
        return cls(operation, filters, position)


def filters_digest(flt: DlqFilter) -> str:
    return hashlib.sha256(json.dumps(asdict(flt), sort_keys=True).encode()).hexdigest()[:16]


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

    def replay_batch(self, flt: DlqFilter, *, batch: int, cursor: str | None = None) -> dict[str, Any]:
        """One batch of a bulk replay: at most `batch` items matching the filter, oldest first, from
        where `cursor` (the last batch's answer) left off; the answer's `cursor` continues it (None: done).

        Together the batches take what `replay_matching` would in one call: what was in the queue
        when the first began, each item once (the ids given are kept in Redis between batches, ~70 B
        each, until the last or an hour after a batch: an item replayed that failed again is not
        taken again)."""
        redis = self.store.redis
        digest = filters_digest(flt)
        if cursor is None:
            operation, start = secrets.token_hex(8), self.dlq.begin(flt)
            if start is None:
                return {"selected": 0, "dry_run": False, "outcomes": {}, "cursor": None}
            self.dlq.remember(self.store.keys.dlq_replayed(operation), [])
        else:
            given = Cursor.decode(cursor)
            if given.filters != digest:
                raise InvalidRequest("cursor: made for other filters (send the first batch's filters with it)")
            operation, start = given.operation, given.position
            if not redis.exists(self.store.keys.dlq_replayed(operation)):
                raise InvalidRequest("cursor: expired (its replay is done, or an hour passed); start again without it")
        remembered = self.store.keys.dlq_replayed(operation)
        outcomes: dict[str, int] = {}
        replayed: list[str] = []
        position, more = start, False
        for item, after in self.dlq.scan_from(flt, start, once_each=True, remembered=remembered):
            if len(replayed) == batch:
                more = True
                break
            outcome = self.replay(item)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            replayed.append(item["id"])
            position = after
        if more:
            self.dlq.remember(remembered, replayed)
        else:  # done: no cursor can go on, nothing need be remembered
            redis.delete(remembered)
        following = Cursor(operation, digest, position).encode() if more else None
        return {"selected": len(replayed), "dry_run": False, "outcomes": outcomes, "cursor": following}

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
