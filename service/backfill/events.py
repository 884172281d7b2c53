"""`relay backfill stripe`: events read back from Stripe's Events API, fed like webhooks.

Stripe keeps events for 30 days and retries a webhook for 3: past that, what the relay missed is
only in GET /v1/events. Read newest first within [since, until] (created[gte]/created[lte]),
only the types the mapping uses (types[]; past Stripe's 20, kept by the reader), optionally only those no
endpoint acknowledged (delivery_success=false). Each page is fed before the next is read; a stop
request (Ctrl-C) ends after the current page, or at once while waiting to read the next, with the
command that resumes (--until the oldest event time fed: the events at that second come again and
are counted as duplicates). Redis failing part-way ends the run with StoreLost, which says the same.
Dedup remembers an event id for RELAY_DEDUP_TTL_SECONDS (7 days by default) and Stripe keeps 30 days:
a window reaching past that memory feeds the older events the relay received already once more (they
are delivered again; last-writer-wins still keeps newer state). Re-feeding history can be the point,
so it is not refused: the run says so in one line before it reads (dedup_note).

Read newest first, a customer's newest user would be learned first and its older events dead-lettered
as identity conflicts: the opposite of webhooks, which arrive in event order and teach the oldest
(service/store/customer_map.py). So a run (not a dry run) reads the window twice: first only to note,
per customer not learned yet, the user its oldest event names (in Redis, per run, about what the map
gains anyway; a page at a time in the process), which it then learns; then it feeds. A customer's
events come out as webhooks in event order would have them: the oldest user's delivered, another's
kept as `identity_conflict`. It costs the window's reads twice; a stop during the first read feeds nothing
(the same command runs it again). A reconcile reads once when what is missing fits in memory
(feed_after_one_read).
"""

from __future__ import annotations

import fnmatch
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from redis.exceptions import RedisError

from service.backfill.feed import Feeder
from service.backfill.progress import Reporter
from service.backfill.stripe_reader import Interrupted, ReadError
from service.store.customer_map import FirstUsers

STRIPE_EVENT_RETENTION_SECONDS = 30 * 24 * 3600
# Reconcile: missing events held to feed after one read, at most this many and this much JSON. Parsed, an
# event takes about 4x its JSON (a 4 KB subscription event, ~15 KB): 8 MB is ~32 MB of the worker's memory.
HOLD_UP_TO = 10_000
HOLD_BYTES = 8 * 1024 * 1024
HELD_PAGE = 100  # held events fed between two looks at the stop asked and the progress
DURATION = re.compile(r"^(\d+)([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
EARLIEST = 946_684_800  # 2000-01-01T00:00:00Z: no provider's API holds anything older
AHEAD_SECONDS = 86_400  # a time up to a day ahead is taken (clocks differ); further is a typo, not a window


def parse_time(text: str, *, now: float | None = None) -> int:
    """An ISO 8601 time, a duration back from now (90m, 36h, 7d) or unix seconds -> unix seconds,
    between EARLIEST and a day from now: a time past those is a typo, and a provider's API (or
    Paddle's RFC 3339, years 1-9999) cannot take it."""
    now = time.time() if now is None else now
    text = text.strip()
    if match := DURATION.match(text):
        seconds = int(now) - int(match.group(1)) * UNITS[match.group(2)]  # int: a huge count cannot overflow
    elif text.isdigit():
        seconds = int(text)
    else:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{text!r} is neither an ISO time, a duration (7d, 36h, 90m) nor unix seconds") from None
        if moment.tzinfo is None:
            raise ValueError(f"{text!r} has no time zone (add Z or +00:00)")
        seconds = int(moment.timestamp())
    if not EARLIEST <= seconds <= now + AHEAD_SECONDS:
        raise ValueError(f"{text!r} is before 2000-01-01 or more than a day from now")
    return seconds


def event_types(patterns: list[str] | None, mapped: list[str]) -> list[str]:
    """Concrete type names for types[]: each entry (customer.*, or a name) matched against the mapped
    types; none given: every mapped type (events of other types would only be ignored). An entry that
    matches none is refused: it would read nothing (or what the mapping ignores) and say done."""
    entries = [pattern.strip() for pattern in patterns or [] if pattern.strip()]
    if not entries:
        return sorted(mapped)
    matched = {pattern: fnmatch.filter(mapped, pattern) for pattern in entries}
    if unknown := [pattern for pattern, names in matched.items() if not names]:
        known = ", ".join(sorted(mapped)) or "none"
        raise ValueError(
            f"--types {','.join(unknown)}: no event type the mapping knows matches (it knows {known}; "
            "`relay check-config` lists them, RELAY_MAPPING_FILE sets them)"
        )
    return sorted({name for names in matched.values() for name in names})


class EventReader(Protocol):
    """A provider's events list (stripe_reader, paddle_reader): how it pages and filters is its own."""

    calls: int
    rate_limited: int

    def event_pages(
        self, since: int, until: int | None, types: list[str], *, undelivered_only: bool = False
    ) -> Iterator[list[dict[str, Any]]]:
        """Non-empty pages of events in [since, until] of the given types, newest first."""
        ...


@dataclass(frozen=True)
class Window:
    since: int
    until: int | None = None

    def done(self, oldest: int, now: float) -> float:
        """How far a newest-first read has come, 0-100."""
        top = self.until if self.until is not None else now
        span = max(top - self.since, 1)
        return max(0.0, min(100.0, (top - oldest) / span * 100))


def read_window(since: str, until: str | None, *, now: float, default_until: int | None = None) -> Window:
    """The window --since and --until name (--until: default_until when not given, else up to now);
    a window that ends before it starts would read nothing and say done, so it is refused."""
    start = parse_time(since, now=now)
    end = parse_time(until, now=now) if until else default_until
    if start >= (now if end is None else end):
        bound = f"--until {until}" if until else "now" if end is None else "the default --until (see --help)"
        raise ValueError(f"--since {since} is not before {bound}: the window is empty")
    return Window(start, end)


@dataclass
class Result:
    summary: dict[str, Any]
    interrupted: bool
    resume_until: int | None  # --until for the command that continues (None: the window's own)


class ReadFailed(ReadError):
    """The provider refused or failed after pages were fed: they are kept, and a run with --until
    `resume_until` (the oldest event time fed) continues."""

    def __init__(self, message: str, resume_until: int) -> None:
        super().__init__(message)
        self.resume_until = resume_until


class StoppedAtOnce(KeyboardInterrupt):
    """A second Ctrl-C stopped the run at once, maybe part-way through a page: a run with --until
    `resume_until` (None: the window's own, no page was fed whole) continues."""

    def __init__(self, resume_until: int | None) -> None:
        super().__init__()
        self.resume_until = resume_until


class StoreLost(Exception):
    """Redis failed part-way through a run: what was fed before is kept, and a run with --until
    `resume_until` (None: the window's own) continues; `cause` is redis-py's error."""

    def __init__(self, cause: RedisError, resume_until: int | None) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.resume_until = resume_until


def backfill_events(
    reader: EventReader,
    feeder: Feeder,
    window: Window,
    types: list[str],
    *,
    undelivered_only: bool = False,
    stop: threading.Event | None = None,
    reporter: Reporter | None = None,
    on_page: Pick | None = None,
    warn_past_dedup: bool = True,
    learn: bool = True,
) -> Result:
    """Feed every event of the window; `on_page` may narrow a page first (reconcile: the missing).
    `warn_past_dedup`: say so (on `reporter`) before reading when the window reaches past the dedup memory.
    `learn`: read the window once first for the customers' first users (learn_first_users), unless they
    were learned already (feed_after_one_read)."""
    if reporter and warn_past_dedup and (note := dedup_note(window, feeder.store.dedup_ttl, time.time())):
        reporter.note(note)
    oldest: int | None = None
    interrupted = False
    progress = Progress(window, reporter, halves=not feeder.dry_run)
    try:
        if learn and not feeder.dry_run:
            learn_first_users(
                reader, feeder, window, types, undelivered_only=undelivered_only, stop=stop, progress=progress
            )
        for page in reader.event_pages(window.since, window.until, types, undelivered_only=undelivered_only):
            chosen = on_page(page) if on_page else page
            for event in chosen:
                feeder.event(event)
            oldest = event_time(feeder, page[-1], window)
            progress.fed(summary(reader, feeder), oldest)
            if stop is not None and stop.is_set():
                interrupted = True
                break
    except Interrupted:  # asked while the reader waited for its next read
        interrupted = True
    except RedisError as exc:  # a page part-fed is read again: what it fed comes back as duplicates
        raise StoreLost(exc, window.until if oldest is None else oldest) from exc
    except ReadError as exc:  # the provider failed part-way: what was fed is kept
        if oldest is None:
            raise
        raise ReadFailed(str(exc), oldest) from exc
    except KeyboardInterrupt as exc:  # a page part-fed is read again, as above
        raise StoppedAtOnce(window.until if oldest is None else oldest) from exc
    resume_until = (window.until if oldest is None else oldest) if interrupted else None
    return Result(summary(reader, feeder), interrupted, resume_until)


def event_time(feeder: Feeder, event: dict[str, Any], window: Window) -> int:
    """The provider's own envelope says when (Stripe: created; Paddle: occurred_at)."""
    return feeder.source.describe(event, {}).event_time or window.since


@dataclass
class Progress:
    """The bar of a newest-first read: with `halves`, the first read of the window (learn_first_users)
    fills its first half, the feeding read the second."""

    window: Window
    reporter: Reporter | None
    halves: bool

    def learned(self, summary: dict[str, Any], oldest: int) -> None:
        if self.reporter:
            self.reporter.update(summary, self.window.done(oldest, time.time()) / 2)

    def fed(self, summary: dict[str, Any], oldest: int) -> None:
        if self.reporter:
            done = self.window.done(oldest, time.time())
            self.reporter.update(summary, 50 + done / 2 if self.halves else done)


Pick = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


def learn_first_users(
    reader: EventReader,
    feeder: Feeder,
    window: Window,
    types: list[str],
    *,
    undelivered_only: bool = False,
    stop: threading.Event | None,
    progress: Progress,
    pick: Pick | None = None,
) -> None:
    """Read the window once, newest first, noting per customer not learned yet the user of its oldest
    event; then learn them (FirstUsers). `pick`: the events of each page to note (all by default), and
    whatever else the caller does with them. A dry run notes nothing. Stopped (Interrupted, also for
    `stop` set after a page) or failed part-way, nothing is learned: the notes of part of the window
    would name a newer user."""
    first = None if feeder.dry_run else FirstUsers(feeder.store.redis, feeder.source_name)
    try:
        for page in reader.event_pages(window.since, window.until, types, undelivered_only=undelivered_only):
            picked = page if pick is None else pick(page)
            if first is not None:
                first.note(feeder.identities(picked))
            progress.learned(summary(reader, feeder), event_time(feeder, page[-1], window))
            if stop is not None and stop.is_set():
                raise Interrupted
    except BaseException:
        if first is not None:
            first.forget()
        raise
    if first is not None:
        first.learn()


def feed_after_one_read(
    reader: EventReader,
    feeder: Feeder,
    window: Window,
    types: list[str],
    *,
    pick: Pick,
    pick_again: Pick,
    hold_up_to: int | None = None,  # HOLD_UP_TO
    stop: threading.Event | None = None,
    reporter: Reporter | None = None,
) -> Result:
    """Reconcile's read, once where backfill_events reads twice: the events `pick` takes from each page (the
    missing ones, counted as they are read) are held while the window is read, the users they name first
    are learned (learn_first_users), then they are fed from memory. Past `hold_up_to` events held, the
    read goes on noting first users only, and a second read feeds what `pick_again` takes (counting nothing
    twice). Past HOLD_BYTES of their JSON too: the periodic reconcile runs in the worker's pod. Stopped or
    failed before feeding, nothing is learned or fed: the same command runs it again."""
    progress = Progress(window, reporter, halves=True)
    limit = HOLD_UP_TO if hold_up_to is None else hold_up_to
    held: list[dict[str, Any]] | None = []
    held_bytes = 0

    def hold(page: list[dict[str, Any]]) -> list[dict[str, Any]]:
        nonlocal held, held_bytes
        picked = pick(page)
        if held is not None:
            held.extend(picked)
            held_bytes += sum(len(json.dumps(event)) for event in picked)
            held = held if len(held) <= limit and held_bytes <= HOLD_BYTES else None
        return picked

    try:
        learn_first_users(reader, feeder, window, types, stop=stop, progress=progress, pick=hold)
        if held is None:  # the customers' first users are learned: the second read only feeds
            return backfill_events(
                reader,
                feeder,
                window,
                types,
                stop=stop,
                reporter=reporter,
                on_page=pick_again,
                warn_past_dedup=False,
                learn=False,
            )
        for start in range(0, len(held), HELD_PAGE):
            chunk = held[start : start + HELD_PAGE]
            for event in chunk:
                feeder.event(event)
            progress.fed(summary(reader, feeder), event_time(feeder, chunk[-1], window))
            if stop is not None and stop.is_set():
                raise Interrupted
    except Interrupted:
        return Result(summary(reader, feeder), True, window.until)
    except RedisError as exc:
        raise StoreLost(exc, None) from exc
    except KeyboardInterrupt as exc:
        raise StoppedAtOnce(None) from exc
    return Result(summary(reader, feeder), False, None)


def summary(reader: EventReader, feeder: Feeder) -> dict[str, Any]:
    return {**feeder.tally.as_dict(), "api_calls": reader.calls, "rate_limited": reader.rate_limited}


def dedup_note(window: Window, dedup_ttl: int, now: float) -> str | None:
    """A warning when part of the window is older than the dedup memory: events the relay received
    before that are no longer known, so they are accepted and delivered again."""
    if window.since < now - dedup_ttl:
        return (
            f"warning: --since reaches past the dedup memory ({dedup_ttl // 3600} h, RELAY_DEDUP_TTL_SECONDS): "
            "events older than that which the relay received already are fed (and delivered) again"
        )
    return None


def check_window(window: Window, now: float) -> str | None:
    """A warning when part of the window is past what Stripe still keeps."""
    if window.since < now - STRIPE_EVENT_RETENTION_SECONDS:
        return "note: Stripe keeps events for 30 days; older ones cannot be read back (use `relay sync stripe`)"
    return None


__all__ = [
    "EventReader", "ReadError", "ReadFailed", "Result", "StoreLost", "Window", "backfill_events", "check_window",
    "dedup_note", "event_types", "parse_time", "read_window",
]  # fmt: skip
