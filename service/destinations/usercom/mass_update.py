"""PUT /users/mass_update_standard_attributes/ (shared/seeds/usercom_mass_update_standard_attributes.txt):
one standard attribute, one value, many users by User.com id, in one call.

A burst of updates (a sync) is planned as calls: each user's own update is one call; a mass update
covers one (attribute, value) pair for every user that gets it. A user leaves the per-user calls
only if its whole update is covered by mass updates (no custom attributes, no tags, each standard
value a string the mass endpoint takes), and only users whose User.com id is known qualify. Groups
of users with the same update are taken greedily when they save calls; the plan is used if, and
only if, it makes fewer calls than one per user.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from service.destinations.usercom.rules import screen

PATH = "/users/mass_update_standard_attributes/"
# The seed's allowed attributes, less user_id (our identity: never mass-assigned).
MASS_ATTRIBUTES = frozenset(
    {
        "assigned_to", "city", "company_id", "country", "email", "facebook_url", "first_name", "gender",
        "google_url", "gravatar_url", "last_name", "linkedin_url", "notifications", "phone_number", "region",
        "score", "status", "timezone", "twitter_url", "unsubscribed",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Pending:
    """One user's update in a burst."""

    user_id: str
    usercom_id: int | None  # known from an earlier answer (keys.usercom_id), else None
    standard: dict[str, Any]
    custom: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()


@dataclass
class Plan:
    mass: list[tuple[str, str, list[int]]]  # (attribute, value, User.com ids)
    per_user: list[Pending]

    @property
    def calls(self) -> int:
        return len(self.mass) + len(self.per_user)


def _signature(update: Pending) -> frozenset[tuple[str, str]] | None:
    if update.usercom_id is None or update.custom or update.tags or not update.standard:
        return None
    standard, dropped = screen(update.standard)  # as the user's own call would send it (a choice's code)
    if dropped:  # a value User.com's rules refuse goes by the user's own call (reported)
        return None
    if not all(name in MASS_ATTRIBUTES and isinstance(value, str) for name, value in standard.items()):
        return None
    return frozenset(standard.items())


def plan(updates: list[Pending]) -> Plan:
    """The fewest calls found: mass updates where they save calls, else one call per user."""
    groups: dict[frozenset[tuple[str, str]], list[Pending]] = defaultdict(list)
    for update in updates:
        if (signature := _signature(update)) is not None:
            groups[signature].append(update)
    chosen: set[tuple[str, str]] = set()
    covered: dict[str, frozenset[tuple[str, str]]] = {}
    for signature, members in sorted(groups.items(), key=lambda item: (-len(item[1]), sorted(item[0]))):
        if len(members) > len(signature - chosen):  # covering them costs fewer calls than their own
            chosen |= signature
            covered.update((member.user_id, signature) for member in members)
    ids: dict[tuple[str, str], list[int]] = defaultdict(list)
    for update in updates:
        if update.user_id in covered:
            for pair in covered[update.user_id]:
                ids[pair].append(int(update.usercom_id))  # type: ignore[arg-type]
    mass = [(name, value, sorted(members)) for (name, value), members in sorted(ids.items())]
    candidate = Plan(mass, [u for u in updates if u.user_id not in covered])
    return candidate if candidate.calls < len(updates) else Plan([], list(updates))
