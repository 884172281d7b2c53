"""A dead-lettered event, and the filters operators select dead letters with. Plain values."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

# Why an event is in a dead-letter queue; each destination adds `<destination>_rejected`.
INVALID_PAYLOAD = "invalid_payload"
# identity_conflict: the event names a user for a customer learned for another (never re-pointed).
IDENTITY_CONFLICT = "identity_conflict"
OTHER_REASONS = ("retries_exhausted", "unresolved_identity", IDENTITY_CONFLICT, "internal_error")
# Kept as epoch seconds; shown as ISO 8601 (with `<name>_unix`) by the admin API and the CLI.
TIME_FIELDS = ("event_time", "first_failure_at", "last_failure_at")
# A page never starts further in than this: past any queue (RELAY_DLQ_MAX_ITEMS is at most 10^8), and within
# what Redis takes as an index (it refuses one past 2^63 - 1, which came back as a 503).
MAX_OFFSET = 10**9


def rejected_by(destination: str) -> str:
    return f"{destination}_rejected"


def reasons(destinations: list[str] | tuple[str, ...]) -> list[str]:
    return [INVALID_PAYLOAD, *(rejected_by(d) for d in destinations), *OTHER_REASONS]


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered item: enough to understand the failure and replay it."""

    id: str
    reason: str  # invalid_payload, <destination>_rejected, or one of OTHER_REASONS
    source: str
    event_type: str | None
    event_id: str | None
    event_time: int | None
    message: str
    update: dict[str, Any] | None = None
    event: Any = None  # the original payload, when it could not be normalized
    user_id: str | None = None
    attempts: int = 0
    first_failure_at: float | None = None
    last_failure_at: float | None = None
    last_status: int | None = None
    last_response: str | None = None
    destination: str = (
        "usercom"  # whose dead-letter queue keeps it (the default for items kept before destinations existed)
    )

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), default=str)


@dataclass(frozen=True, kw_only=True)
class DlqFilter:
    reason: str | None = None
    event_type: str | None = None
    user_id: str | None = None
    since: float | None = None  # time of (last) failure, epoch seconds
    until: float | None = None

    def matches(self, item: dict[str, Any]) -> bool:
        return (
            (self.reason is None or item.get("reason") == self.reason)
            and (self.event_type is None or item.get("event_type") == self.event_type)
            and (
                self.user_id is None or self.user_id in (item.get("user_id"), (item.get("update") or {}).get("user_id"))
            )
        )
