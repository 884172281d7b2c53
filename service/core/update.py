"""The normalized user update: what every source becomes and every destination receives."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True, kw_only=True)
class UserUpdate:
    source: str  # "stripe"
    event_id: str
    event_type: str
    event_time: int  # the source's own event time, epoch seconds
    user_id: str | None  # explicit identity carried by the event (metadata[RELAY_IDENTITY_KEY])
    customer_id: str | None  # the source's customer id, for identity fallback and learning
    standard: dict[str, Any] = field(default_factory=dict)
    custom: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)

    @property
    def hint(self) -> str | None:
        """Who this update is for, as far as intake can tell: the events waiting under one hint are
        for one User.com user and can go out as one update (the worker resolves the final id)."""
        if self.user_id:
            return f"user:{self.user_id}"
        return f"customer:{self.customer_id}" if self.customer_id else None

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its deep copy costs more than the rest of the webhook path.
        return {name: getattr(self, name) for name in _FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UserUpdate:
        return cls(**data)


_FIELDS = tuple(f.name for f in fields(UserUpdate))
USER_ID_MAX_LENGTH = 255
# What intake accepts as an event id: it names keys, job ids and dead letters (`<source>-<event id>`).
EVENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,255}\Z")
EVENT_ID_RULE = "1-255 of A-Z a-z 0-9 _ . : -"


def user_id_problem(user_id: str) -> str | None:
    """Why an id an event names its user by cannot be one (one short sentence), or None: it is a key in
    Redis, a path segment at the destination and a filter in the dead-letter queue."""
    if not user_id.strip():
        return "The user id is blank."
    if user_id in (".", ".."):
        return "The user id is . or .., which a URL reads as a path step, not a segment."
    if len(user_id) > USER_ID_MAX_LENGTH:
        return f"The user id is longer than {USER_ID_MAX_LENGTH} characters."
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in user_id):
        return "The user id holds a control or format character (a line break, a tab, a direction override...)."
    return None
