"""Per-user trace: what the relay last did for a user at one destination, for operators.

Each delivery and each dead letter of a user is one JSON entry pushed on the list
`relay:trace:<destination>:<user id>` by the same Lua script that counts its outcome (no extra
round trip): the newest RELAY_TRACE_PER_USER entries (0 turns tracing off), kept
RELAY_TRACE_TTL_DAYS after the last one. An entry stays small (about MAX_ENTRY_BYTES): long values
are cut and, past the budget, attributes are left out (the entry says how many).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from service.core.dead_letter import DeadLetter
from service.store import keys

DEFAULT_PER_USER = 20
DEFAULT_TTL_DAYS = 7
MAX_ENTRY_BYTES = 2000
MAX_VALUE_CHARS = 120


@dataclass(frozen=True)
class TracePolicy:
    """How much trace is kept per user; per_user=0 turns it off."""

    per_user: int = DEFAULT_PER_USER
    ttl_seconds: int = DEFAULT_TTL_DAYS * 24 * 3600

    @property
    def enabled(self) -> bool:
        return self.per_user > 0


@dataclass(frozen=True, kw_only=True)
class TraceEntry:
    """One entry: a delivery (kind 'delivery') or a dead letter (kind 'dead_letter')."""

    kind: str
    user_id: str
    destination: str
    at: float = field(default_factory=time.time)
    endpoint: str | None = None
    status: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)  # the events merged into this delivery
    dropped: list[dict[str, str]] = field(default_factory=list)  # values dropped by a rule: {name, reason}
    dead_letter_id: str | None = None
    reason: str | None = None

    def to_json(self) -> str:
        """Compact JSON of at most about MAX_ENTRY_BYTES: values cut, then attributes left out."""
        entry: dict[str, Any] = {
            "kind": self.kind,
            "at": round(self.at, 3),
            "destination": self.destination,
            "user_id": _cut(self.user_id),
            "event_ids": [_cut(e) for e in self.event_ids[:20]],
        }
        if self.kind != "delivery":
            entry.update(dead_letter_id=_cut(self.dead_letter_id or ""), reason=self.reason, status=self.status)
            return _dump(entry)
        entry.update(endpoint=self.endpoint, status=self.status, tags=[_cut(t) for t in self.tags[:20]])
        entry["dropped"] = [{k: _cut(str(v)) for k, v in d.items()} for d in self.dropped[:10]]
        entry["attributes"] = {_cut(name): _cut_value(value) for name, value in self.attributes.items()}
        whole = _dump(entry)
        if len(whole) <= MAX_ENTRY_BYTES - 40:
            return whole  # the usual entry: everything fits
        attributes: dict[str, Any] = {}
        entry["attributes"] = attributes
        # The entry's length is counted as attributes are added (each `"name":value`, a comma
        # between them), not dumped again for each one.
        size, left_out = len(_dump(entry)), 0
        for name, value in self.attributes.items():
            key, kept = _cut(name), _cut_value(value)
            if key in attributes:  # two long names cut to the same: the later value replaces the earlier
                added = len(_dump(kept)) - len(_dump(attributes[key]))
            else:
                added = len(_dump(key)) + 1 + len(_dump(kept)) + (1 if attributes else 0)
            if size + added > MAX_ENTRY_BYTES - 40:
                left_out += 1
                continue
            attributes[key] = kept
            size += added
        if left_out:
            entry["attributes_left_out"] = left_out
        return _dump(entry)


def dead_letter_entry(item: DeadLetter, event_id: str) -> TraceEntry:
    return TraceEntry(
        kind="dead_letter",
        user_id=item.user_id or "",
        destination=item.destination,
        event_ids=[event_id],
        dead_letter_id=item.id,
        reason=item.reason,
        status=item.last_status,  # the destination's answer that refused it, if one did
    )


def trace_args(policy: TracePolicy, destination_keys: keys.Keys, entry: TraceEntry | None) -> tuple[str, str]:
    """(trace key, entry JSON) for a script; ('', '') when there is nothing to keep."""
    if entry is None or not policy.enabled or not entry.user_id:
        return "", ""
    return destination_keys.trace(entry.user_id), entry.to_json()


def read_trace(redis: Redis, destination_keys: keys.Keys, user_id: str) -> list[dict[str, Any]]:
    """The user's entries at the destination, newest first."""
    return [json.loads(raw) for raw in redis.lrange(destination_keys.trace(user_id), 0, -1)]


def _dump(entry: dict[str, Any]) -> str:
    return json.dumps(entry, separators=(",", ":"), default=str)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 1] + "…"


def _cut_value(value: Any) -> Any:
    if isinstance(value, str):
        return _cut(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return _cut(json.dumps(value, default=str))
