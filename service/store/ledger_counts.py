"""The ledger's counts as operators read them, and what settling an event answers."""

from __future__ import annotations

from dataclasses import dataclass

LEDGER_FIELDS = ("received", "delivered", "coalesced", "ignored", "dead_lettered")


def ledger_from(raw: dict[bytes, bytes]) -> dict[str, int]:
    """The ledger hash as read from Redis -> counts, with in flight = received - everything settled."""
    counts = {name.decode(): int(value) for name, value in raw.items()}
    ledger = {name: counts.get(name, 0) for name in LEDGER_FIELDS}
    ledger["in_flight"] = ledger["received"] - sum(ledger[name] for name in LEDGER_FIELDS if name != "received")
    ledger["duplicates"] = counts.get("duplicates", 0)
    ledger["replayed"] = counts.get("replayed", 0)
    return ledger


@dataclass(frozen=True)
class Settled:
    counted: bool  # False: this event's outcome was counted before (a job that ran twice)
    accepted_at: float | None  # when the event was accepted (or replayed), if still tracked

    def __bool__(self) -> bool:
        return self.counted
