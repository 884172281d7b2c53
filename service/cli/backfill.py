"""`relay backfill|sync|reconcile <provider>`: bring the CRM to billing truth from the provider's API.

Each needs REDIS_URL and the provider's read-only API key (STRIPE_API_KEY, PADDLE_API_KEY,
LEMONSQUEEZY_API_KEY); the key never appears in any output. Paddle: its GET /events, /customers and
/subscriptions; no --undelivered-only (its events API has no delivery filter). Lemon Squeezy: `sync` only,
from its GET /v1/subscriptions; it keeps no event history, so `backfill` and `reconcile` refuse it (one line,
exit 2, whatever else the command line holds). Progress goes to stderr (rich), the summary table to
stdout; --json prints one JSON document instead and no progress (a dry run's says `would_queue`). Ctrl-C stops after the
current page, or at once while waiting for the next read (--max-rps), and prints how to resume; a second Ctrl-C stops
at once, and prints it too. Redis is reached before the provider is read: a run that could not store what it reads
reads nothing. Exit codes: 0 done, 1 interrupted (Ctrl-C, or Redis lost during the run: one line says so and how to
resume), 2 bad settings or input (Redis not reachable at the start among them), 3 the provider refused or failed.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from service.backfill import DEFAULT_MAX_RPS, LEMONSQUEEZY_MAX_RPS, MAX_RPS, MIN_RPS, PADDLE_MAX_RPS
from service.cli.redis_exit import problem
from service.config import Settings, settings_or_exit

if TYPE_CHECKING:  # imported when a command runs: stripe and rich cost every other `relay` command start-up time
    from service.backfill.feed import Feeder
    from service.backfill.progress import Reporter

PROVIDERS = ["stripe", "paddle"]  # backfill and reconcile: each has an events list API
SYNC_PROVIDERS = ["stripe", "paddle", "lemonsqueezy"]
NO_EVENT_HISTORY = {"lemonsqueezy": "Lemon Squeezy"}  # sync only: their APIs list no events
EXIT_INTERRUPTED = 1  # Ctrl-C, or Redis lost during the run: what was fed is kept, the run can be resumed
EXIT_BAD_INPUT = 2  # bad settings or input, Redis not reachable at the start: nothing was read
EXIT_PROVIDER = 3  # the provider refused or failed


class EventsProvider(argparse.Action):
    """The provider of `backfill` and `reconcile`: one whose API keeps no event history is refused as soon as it
    is read, as --version answers: one line and exit 2, before a missing --since or a bad argument is."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option_string: Any = None) -> None:
        if values in NO_EVENT_HISTORY:
            print(
                f"{parser.prog}: {NO_EVENT_HISTORY[values]} keeps no event history to read back (its API lists no "
                f"events); `relay sync {values}` brings the CRM to the state of its subscriptions",
                file=sys.stderr,
            )
            raise SystemExit(EXIT_BAD_INPUT)
        setattr(namespace, self.dest, values)


def add_parsers(sub: Any) -> None:
    providers = [*PROVIDERS, *NO_EVENT_HISTORY]
    fill = sub.add_parser("backfill", help="feed events read back from the provider's Events API (last 30 days)")
    fill.add_argument("provider", choices=providers, action=EventsProvider, help="whose API (stripe, paddle)")
    fill.add_argument("--since", required=True, help="ISO time, a duration back from now (7d, 36h) or unix seconds")
    fill.add_argument("--until", help="same forms (default: now)")
    fill.add_argument("--types", help="comma-separated event types, * allowed (default: every mapped type)")
    fill.add_argument(
        "--undelivered-only", action="store_true", help="only events no endpoint acknowledged (Stripe only)"
    )
    _common(fill)
    fill.set_defaults(func=cmd_backfill)
    snap = sub.add_parser("sync", help="initial sync: every customer and subscription as of now (resumable)")
    snap.add_argument("provider", choices=SYNC_PROVIDERS, help="whose API (stripe, paddle, lemonsqueezy)")
    snap.add_argument(
        "--customers-only", action="store_true", help="customers only, no subscriptions (not for lemonsqueezy)"
    )
    snap.add_argument("--from-scratch", action="store_true", help="ignore the checkpoint of an interrupted sync")
    _common(snap)
    snap.set_defaults(func=cmd_sync)
    rec = sub.add_parser("reconcile", help="find events the relay never received and feed them (backfill path)")
    rec.add_argument("provider", choices=providers, action=EventsProvider, help="whose API (stripe, paddle)")
    rec.add_argument("--since", default="3d", help="how far back (default 3d; at most the dedup memory)")
    rec.add_argument("--until", help="default: 5 minutes ago (younger events may still be on their way)")
    _common(rec)
    rec.set_defaults(func=cmd_reconcile)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="read and count, queue nothing")
    parser.add_argument(
        "--max-rps",
        type=float,
        help=f"API reads/s (default: Stripe {DEFAULT_MAX_RPS:g}, Paddle {PADDLE_MAX_RPS:g}, "
        f"Lemon Squeezy {LEMONSQUEEZY_MAX_RPS:g})",
    )
    parser.add_argument("--json", action="store_true", help="no progress; one line of JSON at the end")


@contextlib.contextmanager
def stop_on_interrupt(stop: threading.Event) -> Iterator[threading.Event]:
    """The first Ctrl-C (or SIGTERM) sets `stop`: the run stops after the current page, or at once if its
    reader waits to read (`stop` is the reader's too); a second stops at once."""

    def ask(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, ask) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def checked_settings(args: argparse.Namespace) -> Settings:
    """The settings, once the arguments that need none are known to be usable (ValueError otherwise)."""
    if args.max_rps is not None and not MIN_RPS <= args.max_rps <= MAX_RPS:  # nan too
        raise ValueError(f"--max-rps {args.max_rps:g}: give {MIN_RPS:g} to {MAX_RPS:g} reads a second")
    if getattr(args, "undelivered_only", False) and args.provider == "paddle":
        raise ValueError(
            "--undelivered-only: Paddle's events API has no delivery filter (Stripe's delivery_success); "
            "`relay reconcile paddle` finds the events the relay never received"
        )
    if getattr(args, "customers_only", False) and args.provider == "lemonsqueezy":
        raise ValueError(
            "--customers-only: Lemon Squeezy's sync reads its subscriptions only (no webhook event is about "
            "a customer alone, so the mapping has nothing to make of one)"
        )
    return settings_or_exit("admin")


def open_run(command: str, args: argparse.Namespace, settings: Settings, stop: threading.Event) -> tuple[Any, Feeder]:
    """The reader (reader_for's) and the feeder, once Redis answers: a run that could not store what it
    reads must not read it. Redis not answering is one line (no password) and exit EXIT_BAD_INPUT."""
    from service.backfill.feed import Feeder
    from service.backfill.readers import reader_for
    from service.store.connection import worker_redis
    from service.store.ledger import Store

    reader = reader_for(args.provider, settings, args.max_rps, stop)  # no key: ReadError, before any I/O
    redis = worker_redis(settings.redis_url)
    try:
        redis.ping()
    except RedisError as exc:
        print(problem(f"relay {command}", redis, exc), file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
    return reader, Feeder(settings, Store.from_settings(redis, settings), args.provider, dry_run=args.dry_run)


def redis_lost(
    command: str, feeder: Feeder, exc: Exception, reporter: Reporter, summary: dict[str, Any], then: str
) -> int:
    """Redis failed part-way (a RedisError, or StoreLost naming one): the summary of what was done, then
    one line saying so and what to do (for a dry run, nothing: it queued nothing)."""
    from service.backfill.events import StoreLost

    cause = exc.cause if isinstance(exc, StoreLost) else exc
    reporter.finish(summary)
    then = "nothing was queued (dry run)" if feeder.dry_run else then
    line = problem(f"relay {command}", feeder.store.redis, cause)
    print(f"{line} (lost during the run); {then}", file=sys.stderr)
    return EXIT_INTERRUPTED


def cmd_backfill(args: argparse.Namespace) -> int:
    from service.backfill import events as backfill
    from service.backfill.progress import Reporter
    from service.backfill.stripe_reader import ReadError

    stop = threading.Event()
    try:
        now = time.time()
        window = backfill.read_window(args.since, args.until, now=now)
        settings = checked_settings(args)
        mapped = list(settings.mapping.rules.get(args.provider, {}))
        types = backfill.event_types(args.types.split(",") if args.types else None, mapped)
        reader, feeder = open_run("backfill", args, settings, stop)
    except (ValueError, ReadError) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    reporter = Reporter(f"backfill {args.provider}", quiet=args.json, total=100, dry_run=args.dry_run)
    if warning := _retention_note(args.provider, window.since, now):
        reporter.note(warning)
    with stop_on_interrupt(stop):
        try:
            result = backfill.backfill_events(
                reader, feeder, window, types, undelivered_only=args.undelivered_only, stop=stop, reporter=reporter
            )
        except ReadError as exc:
            reporter.finish(backfill.summary(reader, feeder))
            again = ""
            if isinstance(exc, backfill.ReadFailed):  # pages were fed: go on from there
                again = f"; resume with: {_backfill_again(args, window.since, exc.resume_until)}"
            print(f"relay: {exc}{again}", file=sys.stderr)
            return EXIT_PROVIDER
        except backfill.StoreLost as exc:
            again = f"resume with: {_backfill_again(args, window.since, exc.resume_until or int(now))}"
            return redis_lost("backfill", feeder, exc, reporter, backfill.summary(reader, feeder), again)
        except backfill.StoppedAtOnce as exc:
            again = f"resume with: {_backfill_again(args, window.since, exc.resume_until or int(now))}"
            return stopped_at_once("backfill", args, reporter, backfill.summary(reader, feeder), again)
    reporter.finish({**result.summary, "dry_run": args.dry_run, "interrupted": result.interrupted})
    if result.interrupted:  # resume_until None: interrupted before a page was fed, the window is as asked
        reporter.note(
            f"interrupted; resume with: {_backfill_again(args, window.since, result.resume_until or int(now))}"
        )
        return EXIT_INTERRUPTED
    return 0


def _backfill_again(args: argparse.Namespace, since: int, until: int) -> str:
    """The command that feeds the rest of the window (up to `until`, the oldest event time fed) as this
    one was asked, ready for a shell."""
    again = [f"--since {since}", f"--until {until}"]
    if args.types:
        again.append(f"--types {shlex.quote(args.types)}")  # customer.* unquoted is a shell glob
    if args.undelivered_only:
        again.append("--undelivered-only")
    return " ".join([f"relay backfill {args.provider}", *again, *_pace_and_dry_run(args)])


def _pace_and_dry_run(args: argparse.Namespace) -> list[str]:
    """The options a run given again keeps as they were asked (backfill's, reconcile's)."""
    kept = [f"--max-rps {args.max_rps:g}"] if args.max_rps is not None else []
    return [*kept, "--dry-run"] if args.dry_run else kept


def stopped_at_once(
    command: str, args: argparse.Namespace, reporter: Reporter, summary: dict[str, Any], then: str
) -> int:
    """A second Ctrl-C: the summary of what was done (interrupted), then how to go on."""
    reporter.finish({**summary, "dry_run": args.dry_run, "interrupted": True})
    print(f"relay {command}: stopped at once (a second Ctrl-C); {then}", file=sys.stderr)
    return EXIT_INTERRUPTED


def _retention_note(provider: str, since: int, now: float) -> str | None:
    if provider == "paddle":
        from service.backfill.paddle_reader import retention_note

        return retention_note(since, now)
    from service.backfill.events import Window, check_window

    return check_window(Window(since), now)


def cmd_reconcile(args: argparse.Namespace) -> int:
    from service.backfill import events as backfill
    from service.backfill.progress import Reporter
    from service.backfill.reconcile import GRACE_SECONDS, check_reconcile_window, reconcile
    from service.backfill.stripe_reader import ReadError

    stop = threading.Event()
    try:
        now = time.time()
        window = backfill.read_window(args.since, args.until, now=now, default_until=int(now - GRACE_SECONDS))
        settings = checked_settings(args)
        check_reconcile_window(window, settings.dedup_ttl_seconds, now)
        types = backfill.event_types(None, list(settings.mapping.rules.get(args.provider, {})))
        reader, feeder = open_run("reconcile", args, settings, stop)
    except (ValueError, ReadError) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    reporter = Reporter(f"reconcile {args.provider}", quiet=args.json, total=100, dry_run=args.dry_run)
    # The window as asked: --until only if it was given (by default the next run's reaches closer to now).
    asked = [f"--since {window.since}"] + ([f"--until {window.until}"] if args.until else [])
    again = f"run `{' '.join([f'relay reconcile {args.provider}', *asked, *_pace_and_dry_run(args)])}` again"
    with stop_on_interrupt(stop):
        try:
            summary = reconcile(reader, feeder, feeder.store.redis, window, types, stop=stop, reporter=reporter)
        except ReadError as exc:
            reporter.finish(backfill.summary(reader, feeder))
            print(f"relay: {exc}", file=sys.stderr)
            return EXIT_PROVIDER
        except (backfill.StoreLost, RedisError) as exc:  # RedisError: writing the run's record for /status
            return redis_lost("reconcile", feeder, exc, reporter, backfill.summary(reader, feeder), again)
        except KeyboardInterrupt:
            return stopped_at_once("reconcile", args, reporter, backfill.summary(reader, feeder), again)
    reporter.finish({**summary, "dry_run": args.dry_run})
    if summary["interrupted"]:
        reporter.note(f"interrupted; {again}")
        return EXIT_INTERRUPTED
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from service.backfill.progress import Reporter
    from service.backfill.stripe_reader import ReadError
    from service.backfill.sync import STRIPE, sync

    stop = threading.Event()
    try:
        reader, feeder = open_run("sync", args, checked_settings(args), stop)
        if args.provider == "paddle":
            from service.backfill.paddle_sync import PADDLE as shape
        elif args.provider == "lemonsqueezy":
            from service.backfill.lemonsqueezy_sync import LEMONSQUEEZY as shape
        else:
            shape = STRIPE
    except (ValueError, ReadError) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    reporter = Reporter(f"sync {args.provider}", quiet=args.json, dry_run=args.dry_run)

    def so_far() -> dict[str, Any]:  # the summary of a run that ended part-way
        return {**feeder.tally.as_dict(), "api_calls": reader.calls}

    def again(*, redis_lost: bool = False) -> str:
        """The command that goes on, as this one was asked (a dry run keeps no checkpoint: it starts over).
        Redis lost is not asked whether it kept one: a Redis that hangs would hold the line for its timeout."""
        only = ["--customers-only"] if args.customers_only else []
        command = " ".join([f"relay sync {args.provider}", *only, *_pace_and_dry_run(args)])
        if args.dry_run:
            return f"run it again: {command} (a dry run keeps no checkpoint)"
        if redis_lost:
            return f"resume with: {command} (it continues from its checkpoint, if Redis kept one)"
        kept = _has_checkpoint(feeder, shape, args.customers_only)
        return f"resume with: {command}" + (" (it continues from its checkpoint)" if kept else "")

    with stop_on_interrupt(stop):
        try:
            summary = sync(
                reader,
                feeder,
                shape=shape,
                customers_only=args.customers_only,
                from_scratch=args.from_scratch,
                stop=stop,
                reporter=reporter,
            )
        except ReadError as exc:
            reporter.finish(so_far())
            kept = _has_checkpoint(feeder, shape, args.customers_only)
            print(
                f"relay: {exc}" + (" (run it again: it continues from its checkpoint)" if kept else ""), file=sys.stderr
            )
            return EXIT_PROVIDER
        except RedisError as exc:
            return redis_lost("sync", feeder, exc, reporter, so_far(), again(redis_lost=True))
        except KeyboardInterrupt:
            return stopped_at_once("sync", args, reporter, so_far(), again())
    reporter.finish({**summary, "dry_run": args.dry_run})
    if summary["interrupted"]:
        reporter.note(f"interrupted; {again()}")
        return EXIT_INTERRUPTED
    return 0


def _has_checkpoint(feeder: Feeder, shape: Any, customers_only: bool) -> bool:
    """Whether running again continues (a checkpoint of this mode is kept) or starts over (the provider
    refused the first page, or the key; or Redis cannot tell)."""
    from service.backfill.sync import Checkpoint, phases_of

    with contextlib.suppress(RedisError):
        return Checkpoint(feeder.store.redis, feeder.source_name, phases_of(shape, customers_only)).load() is not None
    return False
