"""`relay dlq list|show|replay|purge`: the dead-letter queue from a terminal (talks to Redis)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from marshmallow import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from service.cli.redis_exit import redis_or_exit
from service.config import settings_or_exit
from service.core.dead_letter import MAX_OFFSET, TIME_FIELDS, DlqFilter
from service.core.times import iso_seconds, shown
from service.destinations.registry import NAMES as DESTINATIONS
from service.operator import REFUSALS, REPLAYED, Operator
from service.store.connection import worker_redis
from service.store.ledger import Store
from service.web.schemas import DlqFilterSchema

REPLAY_BATCH = 1000  # items a `replay --all` batch takes between updates of its progress bar
COLUMNS = [
    ("id", 0),  # 0: as wide as the longest: an id and the message are never cut, others end in … when cut
    ("reason", 19),
    ("event_type", 30),
    ("user", 18),
    ("tries", 5),
    ("last failure", 20),
    ("status", 6),
    ("message", 0),
]


def add_parser(sub: Any) -> None:
    dlq = sub.add_parser("dlq", help="inspect, replay and purge the dead-letter queue")
    destination(dlq, None)
    commands = dlq.add_subparsers(dest="dlq_command", required=True)

    def filters(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--reason", help="only items dead-lettered for this reason, e.g. retries_exhausted")
        parser.add_argument("--event-type", help="only items of this event type, e.g. invoice.paid")
        parser.add_argument("--user", dest="user_id", help="only items for this user id")
        parser.add_argument("--since", help="ISO 8601 time of last failure, e.g. 2026-01-31T00:00:00Z")
        parser.add_argument("--until", help="ISO 8601 time of last failure")
        parser.add_argument("--json", action="store_true", help="machine-readable output (one line of JSON)")

    listing = commands.add_parser("list", help="items, oldest failure first")
    destination(listing, argparse.SUPPRESS)  # after the command too; before it when not given here
    filters(listing)
    listing.add_argument("--limit", type=int, default=50, help="at most this many items (default 50)")
    listing.add_argument("--offset", type=int, default=0, help="skip this many matching items first (default 0)")
    show = commands.add_parser("show", help="one item in full (indented JSON)")
    show.add_argument("id", help="the item's id, as `relay dlq list` prints it")
    destination(show, argparse.SUPPRESS)
    show.add_argument("--json", action="store_true", help="compact JSON on one line (default: indented)")
    for name, verb in (("replay", "replay on the replay lane"), ("purge", "delete")):
        command = commands.add_parser(name, help=f"{verb}: one item, or every item matching --all and filters")
        command.add_argument("id", nargs="?", help="one item's id (or --all)")
        command.add_argument("--all", action="store_true", help="every item matching the filters")
        command.add_argument("--dry-run", action="store_true", help="only count")
        destination(command, argparse.SUPPRESS)
        filters(command)
    dlq.set_defaults(func=run)


def destination(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--destination",
        choices=list(DESTINATIONS),
        default=default,
        help="whose dead-letter queue (default: the first configured)",
    )


# The filter options, by the field each sets.
FILTERS = {
    "reason": "--reason",
    "event_type": "--event-type",
    "user_id": "--user",
    "since": "--since",
    "until": "--until",
}
EXIT_USAGE = 2  # as argparse exits on a bad argument
EXIT_INTERRUPTED = 128 + 2  # Ctrl-C (SIGINT), as `relay` answers it where a command does not stop itself


class UsageError(ValueError):
    """An argument the command cannot use: one line naming it, exit EXIT_USAGE."""


def _given(args: argparse.Namespace) -> dict[str, str]:
    return {field: getattr(args, field) for field in FILTERS if getattr(args, field, None) is not None}


def _filter(args: argparse.Namespace) -> DlqFilter:
    schema = DlqFilterSchema()
    try:
        return schema.to_filter(schema.load(_given(args)))
    except ValidationError as exc:
        problems = exc.normalized_messages().items()
        raise UsageError("; ".join(f"{FILTERS[field]}: {' '.join(texts)}" for field, texts in problems)) from None


def _checked_filter(args: argparse.Namespace, destinations: tuple[str, ...]) -> DlqFilter:
    """The filter the arguments give, once each argument is known to be used as asked (before Redis)."""
    if args.destination and args.destination not in destinations:
        raise UsageError(f"--destination {args.destination} is not in RELAY_DESTINATIONS ({', '.join(destinations)})")
    if args.dlq_command == "list" and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    if args.dlq_command == "list" and not 0 <= args.offset <= MAX_OFFSET:
        raise UsageError(f"--offset must be from 0 to {MAX_OFFSET}")
    if args.dlq_command in ("replay", "purge"):
        if bool(args.id) == bool(args.all):
            raise UsageError("give one item id, or --all (with filters)")
        if args.id and (given := _given(args)):
            options = ", ".join(FILTERS[field] for field in given)
            raise UsageError(f"{options}: filters apply to --all, not to one item id")
    return _filter(args)


def table(items: list[dict[str, Any]]) -> str:
    def cells(item: dict[str, Any]) -> list[str]:
        return [
            item["id"],
            item["reason"],
            item.get("event_type") or "-",
            item.get("user_id") or "-",
            str(item.get("attempts", 0)),
            iso_seconds(item.get("last_failure_at")),
            str(item.get("last_status") or "-"),
            (item.get("message") or "").replace("\n", " "),
        ]

    rows = [[name.upper() for name, _ in COLUMNS], *(cells(i) for i in items)]
    widths = [width or max(len(row[n]) for row in rows) for n, (_, width) in enumerate(COLUMNS)]

    def fit(text: str, width: int) -> str:
        return (text if len(text) <= width else text[: width - 1] + "…").ljust(width)

    return "\n".join("  ".join(map(fit, row, widths)).rstrip() for row in rows)


def _replay_in_batches(operator: Operator, chosen: DlqFilter, *, quiet: bool) -> dict[str, Any]:
    """`replay --all`, a batch (REPLAY_BATCH items) at a time, with a progress bar on stderr (none under --json);
    the answer `replay_matching` gives. Stopped (Ctrl-C), what it replayed stays replayed, and the answer
    says what the batches done did, with `interrupted`."""
    outcomes: dict[str, int] = {}
    taken = 0
    cursor: str | None = None
    columns = (TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=Console(stderr=True), disable=quiet) as progress:
            task = progress.add_task("replay", total=None if quiet else operator.dlq.count(chosen))
            while True:
                answer = operator.replay_batch(chosen, batch=REPLAY_BATCH, cursor=cursor)
                for outcome, count in answer["outcomes"].items():
                    outcomes[outcome] = outcomes.get(outcome, 0) + count
                taken += answer["selected"]
                progress.update(task, completed=taken)
                if (cursor := answer["cursor"]) is None:
                    return {"matched": taken, "selected": taken, "dry_run": False, "outcomes": outcomes}
    except KeyboardInterrupt:
        return {"matched": taken, "selected": taken, "dry_run": False, "outcomes": outcomes, "interrupted": True}


def run(args: argparse.Namespace) -> int:
    settings = settings_or_exit("admin")
    try:
        chosen = _checked_filter(args, settings.destinations)
    except UsageError as exc:
        print(f"relay dlq {args.dlq_command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    redis = worker_redis(settings.redis_url)
    with redis_or_exit("relay dlq", redis):
        return _run(args, Operator(Store.from_settings(redis, settings, args.destination), settings), chosen)


def _run(args: argparse.Namespace, operator: Operator, chosen: DlqFilter) -> int:
    command = args.dlq_command
    if command == "list":
        items, total = operator.dlq.matching(chosen, offset=args.offset, limit=args.limit)
        listed = {"items": [shown(i, TIME_FIELDS) for i in items], "total": total}
        print(json.dumps(listed) if args.json else f"{table(items)}\n({total} matching)")
        return 0
    if command == "show":
        item = operator.dlq.get(args.id)
        if item is None:
            print(f"relay dlq: no item {args.id!r}", file=sys.stderr)
            return 1
        print(json.dumps(shown(item, TIME_FIELDS), indent=None if args.json else 2))
        return 0
    if args.all:
        if command == "replay" and not args.dry_run:
            result = _replay_in_batches(operator, chosen, quiet=args.json)
        else:
            act = operator.replay_matching if command == "replay" else operator.purge_matching
            result = act(chosen, dry_run=args.dry_run)
        print(json.dumps(result) if args.json else ", ".join(f"{k}: {v}" for k, v in result.items()))
        if result.get("interrupted"):
            print(
                f"relay dlq: stopped (Ctrl-C) after replaying {result['selected']} (the batch under way may have "
                "replayed more); what it replayed stays replayed: replay --all again to go on",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        not_replayed = sum(n for outcome, n in result.get("outcomes", {}).items() if outcome != REPLAYED)
        return 1 if not_replayed else 0  # a script sees that some items stay (relay dlq list says which)
    item = operator.dlq.get(args.id)
    if item is None:
        print(f"relay dlq: no item {args.id!r}", file=sys.stderr)
        return 1
    if args.dry_run:
        print(f"would {command} {args.id}")
        return 0
    if command == "purge":
        outcome = "deleted" if operator.dlq.delete(args.id) else "gone"
        print(json.dumps({"id": args.id, "status": outcome}) if args.json else f"{args.id}: {outcome}")
        return 0 if outcome == "deleted" else 1
    replay = operator.replay_explained(item)
    message = REFUSALS.get(replay.outcome)
    if args.json:
        extra = {"message": message, "details": replay.details}
        print(json.dumps({"id": args.id, "status": replay.outcome, **{k: v for k, v in extra.items() if v}}))
    else:
        details = f"\n  {json.dumps(replay.details)}" if replay.details else ""
        print(": ".join(filter(None, [args.id, replay.outcome, message])) + details)
    return 0 if replay.outcome == REPLAYED else 1
