"""`relay trace <user id>`: what the relay last did for a user at a destination (talks to Redis)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from service.cli.dlq import EXIT_USAGE
from service.cli.redis_exit import redis_or_exit
from service.config import settings_or_exit
from service.core.times import iso_seconds, shown
from service.destinations.registry import NAMES as DESTINATIONS
from service.store import keys
from service.store.connection import worker_redis
from service.store.trace import read_trace

HEADER = ("TIME", "WHAT", "ENDPOINT / REASON", "STATUS", "EVENTS", "SENT")


def add_parser(sub: Any) -> None:
    trace = sub.add_parser("trace", help="a user's latest deliveries and dead letters, newest first")
    trace.add_argument("user_id", help="the user id (as sent to the destination)")
    trace.add_argument(
        "--destination", choices=list(DESTINATIONS), help="whose trace (default: the first configured destination)"
    )
    trace.add_argument("--json", action="store_true", help="print the entries as JSON instead of a table")
    trace.set_defaults(func=run)


def _sent(entry: dict[str, Any]) -> str:
    parts = [f"{name}={json.dumps(value)}" for name, value in entry.get("attributes", {}).items()]
    parts += [f"+tag:{tag}" for tag in entry.get("tags", [])]
    if entry.get("attributes_left_out"):
        parts.append(f"(+{entry['attributes_left_out']} left out)")
    parts += [f"dropped {d.get('name')}: {d.get('reason')}" for d in entry.get("dropped", [])]
    return " ".join(parts) or "-"


def row(entry: dict[str, Any]) -> tuple[str, ...]:
    when = iso_seconds(entry["at"])
    if entry["kind"] == "delivery":
        what, detail, status = "delivered", entry.get("endpoint") or "-", str(entry.get("status") or "-")
    else:
        what, detail = "dead letter", f"{entry.get('reason')} ({entry.get('dead_letter_id')})"
        status = str(entry.get("status") or "-")
    events = ",".join(entry.get("event_ids", [])) or "-"
    sent = _sent(entry) if entry["kind"] == "delivery" else "-"
    return when, what, detail, status, events, sent


def table(entries: list[dict[str, Any]]) -> str:
    """Columns as wide as their longest cell; the last one (what was sent) never cut."""
    rows = [HEADER, *(row(e) for e in entries)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(r, widths, strict=False)), r[-1]]).rstrip() for r in rows
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_or_exit("admin")
    destination = args.destination or settings.destinations[0]
    if destination not in settings.destinations:  # as the admin API refuses it (400)
        configured = ", ".join(settings.destinations)
        print(f"relay trace: --destination {destination} is not in RELAY_DESTINATIONS ({configured})", file=sys.stderr)
        return EXIT_USAGE
    redis = worker_redis(settings.redis_url)
    with redis_or_exit("relay trace", redis):
        entries = read_trace(redis, keys.Keys(destination), args.user_id)
    if args.json:
        shown_entries = [shown(entry, ("at",)) for entry in entries]
        print(json.dumps({"user_id": args.user_id, "destination": destination, "entries": shown_entries}))
    elif not entries:
        off = " (RELAY_TRACE_PER_USER=0: tracing is off)" if settings.trace_per_user == 0 else ""
        print(f"no trace for user {args.user_id!r} at {destination}{off}")
    else:
        print(table(entries))
    return 0
