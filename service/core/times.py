"""How the relay shows a time to people and programs: ISO 8601 in UTC with a `Z`.

Redis keeps epoch seconds (scripts compare them); the status document, the admin API and the CLI
show each time field `x` as an ISO 8601 string and, where a dashboard computes with it, keep the
number as a sibling `x_unix`."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any


def iso(epoch: float | None) -> str | None:
    """`2026-11-29T20:10:00.123Z` (milliseconds), or None for no time, or one no date can show (a
    provider's `created` in milliseconds, kept in a dead letter: its number is still shown beside)."""
    when = _utc(epoch)
    return None if when is None else when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_seconds(epoch: float | None) -> str:
    """`2026-11-29T20:10:00Z` for a table cell; `-` for no time; the number itself past year 9999."""
    when = _utc(epoch)
    if when is None:
        return "-" if epoch is None else str(epoch)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def _utc(epoch: float | None) -> datetime | None:
    if epoch is None:
        return None
    try:
        return datetime.fromtimestamp(epoch, UTC)
    except (ValueError, OverflowError, OSError):  # out of datetime's range (years 1-9999), or NaN
        return None


def shown(record: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """A copy of `record` whose fields `names` are ISO 8601, each number kept as `<name>_unix`."""
    copy = dict(record)
    for name in names:
        if name in copy:
            number = copy[name]
            copy[name] = iso(number) if isinstance(number, (int, float)) else number
            copy[f"{name}_unix"] = number if isinstance(number, (int, float)) else None
    return copy
