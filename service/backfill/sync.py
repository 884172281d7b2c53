"""`relay sync stripe|paddle|lemonsqueezy`: the CRM's first billing state, from the provider's customers and
subscriptions (each provider's `Shape`: Paddle's in service/backfill/paddle_sync.py, Lemon Squeezy's, its
subscriptions only, in service/backfill/lemonsqueezy_sync.py).

Each customer becomes the update a `customer.updated` event would make, each subscription (every
status) the one a `customer.subscription.updated` would, through the same schemas and mapping,
stamped with the second before its page was asked for: a webhook newer than the snapshot still wins
(last-writer-wins by event time), an older one never overwrites it. A subscription that makes no
subscriber (ended; unpaid, paused or incomplete) is stamped with the time it ended (ended_at, else
canceled_at), but never later than the second before the run began (ReadTimes.ended; that second
without either: unpaid, paused and incomplete ones have neither). It is older than the read time of
every page of the run, so a customer's live subscription wins over the ones it replaced whichever
page each is on (its own page's read time would let a page read a second later outrank an earlier
one's). The run's start is kept in the checkpoint: a resumed run stamps as the run it continues. A
webhook about the ended one from before its end still loses to it. The stamp is not part of the
event id: a second run still makes the same ids.

Subscriptions are read first, each with its customer (`expand[]=data.customer`), and a customer is
fed with its subscription, both accepted in one transaction (Store.accept_together): they land in
the user's pending state together, so the user gets one call, not one per object (reading all
customers first had a tenth of them delivered before their subscription arrived: a second call).
Customers without a subscription follow; those already fed by this run are skipped (a set of ids:
about 60 B per customer in the sync process). Paddle's subscription list cannot include its
customer: Paddle reads customers first, then subscriptions.

The synthetic event id is `sync_<object id>_<digest of the object>`: a second run over unchanged
objects makes the same ids, which the dedup memory answers as duplicates (nothing is sent again);
a changed object makes a new id. A checkpoint in Redis (keys.sync_checkpoint: phase and the last
id fed) is written after every page, so an interrupted or crashed sync (or one whose Redis went away)
continues where it stopped; a stop asked while the reader waits to read (Ctrl-C) ends the run at once.
When the list no longer holds that object (a customer deleted since: Stripe refuses it as the
cursor), the read goes on from the object's own `created` second instead (Shape.reread, kept in
the checkpoint); the objects of that second read before come again and dedup answers them. An API
paging by number (Lemon Squeezy: Shape.numbered) has no cursor: the checkpoint keeps the page fed last,
read again on resume (the reader skips on it what was fed up to the checkpoint's object).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from service.backfill.feed import Feeder
from service.backfill.progress import Reporter
from service.backfill.stripe_reader import CursorGone, Interrupted
from service.sources.stripe.extract import SUBSCRIBED_STATUSES
from service.store import keys

PHASES = ("subscriptions", "customers")
EVENT_TYPES = {"customers": "customer.updated", "subscriptions": "customer.subscription.updated"}


def digest(obj: dict[str, Any]) -> str:
    """Of the object as read: the same object makes the same synthetic event id."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class ReadTimes:
    """The stamps of a snapshot: `page`, the second before its page was asked for; `run`, the second
    before the run began (kept in the checkpoint across resumes), at or before every `page` of it."""

    page: int
    run: int

    def ended(self, ended_at: int | None) -> int:
        """The event time of a subscription that makes no subscriber (ended, incomplete, paused, unpaid):
        when it ended, but before the run began, so that a live subscription read on any page of the run
        outranks it (one read earlier too, and one ended during the run or a provider clock ahead cannot
        pass it); without an end time, the second before the run."""
        return self.run - 1 if ended_at is None else min(ended_at, self.run - 1)


def _seconds(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def snapshot_event(phase: str, obj: dict[str, Any], times: ReadTimes) -> dict[str, Any]:
    stamp = times.page
    if phase == "subscriptions" and obj.get("status") not in SUBSCRIBED_STATUSES:
        stamp = times.ended(_seconds(obj.get("ended_at")) or _seconds(obj.get("canceled_at")))
    return {
        "id": f"sync_{obj['id']}_{digest(obj)}",
        "object": "event",
        "type": EVENT_TYPES[phase],
        "created": stamp,
        "livemode": bool(obj.get("livemode", False)),
        "data": {"object": obj},
    }


@dataclass(frozen=True)
class Shape:
    """What a provider's sync reads: its list resources in order, the query of each, and the event
    each object becomes (the provider's webhook envelope, so its own schemas and mapping apply)."""

    phases: tuple[str, ...]
    snapshot: Callable[[str, dict[str, Any], ReadTimes], dict[str, Any]]
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The query that reads on from an object without naming it as the cursor, for when the list
    # no longer holds it (CursorGone). By default none: the phase is read again from its start.
    reread: Callable[[dict[str, Any]], dict[str, Any]] = lambda _obj: {}
    # Pages by number, with no cursor (Lemon Squeezy): the checkpoint keeps the reader's position (the query
    # of the page fed last) in place of `reread`, and a resumed read starts there, past the checkpoint's object.
    numbered: bool = False


def created_up_to(obj: dict[str, Any]) -> dict[str, Any]:
    """Stripe lists newest first: what follows an object was created in its second or before."""
    return {"created": {"lte": obj["created"]}}


STRIPE = Shape(PHASES, snapshot_event, {"subscriptions": {"status": "all", "expand": ["data.customer"]}}, created_up_to)


class Checkpoint:
    def __init__(self, redis: Redis, source: str, phases: tuple[str, ...] = PHASES) -> None:
        self.redis = redis
        self.key = keys.sync_checkpoint(source)
        self.order = ",".join(phases)
        self.started = int(time.time()) - 1  # ReadTimes.run: this run's, or the one it resumes (load)

    def load(self) -> tuple[str, str | None] | None:
        """Where an interrupted sync stopped; None (start over: nothing is sent twice) without one, or
        for a checkpoint of other phases: a `--customers-only` run's, or one written by a relay that
        read the phases in another order."""
        raw = self.redis.hgetall(self.key)
        if not raw or raw.get(b"order", b"").decode() != self.order:
            return None
        with contextlib.suppress(ValueError):  # one written before the start was kept: this run's
            self.started = min(self.started, int(raw.get(b"started") or b""))
        return raw[b"phase"].decode(), (raw.get(b"after") or b"").decode() or None

    def reread(self) -> dict[str, Any]:
        """The query saved with the cursor (Shape.reread of its object); {} without one."""
        raw = self.redis.hget(self.key, "reread")
        return json.loads(raw) if raw else {}

    def save(self, phase: str, after: str | None, reread: dict[str, Any] | None = None) -> None:
        mapping = {
            "phase": phase,
            "after": after or "",
            "reread": json.dumps(reread or {}),
            "order": self.order,
            "started": self.started,
        }
        self.redis.hset(self.key, mapping={**mapping, "at": time.time()})

    def clear(self) -> None:
        self.redis.delete(self.key)


def phases_of(shape: Shape, customers_only: bool) -> tuple[str, ...]:
    return ("customers",) if customers_only else shape.phases


def sync(
    reader: Any,  # readers.reader_for's: pages(resource, params, after=...), calls, rate_limited (numbered: position())
    feeder: Feeder,
    *,
    shape: Shape = STRIPE,
    customers_only: bool = False,
    from_scratch: bool = False,
    stop: threading.Event | None = None,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    phases = phases_of(shape, customers_only)
    checkpoint = Checkpoint(feeder.store.redis, feeder.source_name, phases)
    resumed = None if from_scratch or feeder.dry_run else checkpoint.load()
    start_phase, after = resumed if resumed and resumed[0] in phases else (phases[0], None)
    reread = checkpoint.reread() if after else {}
    interrupted = False
    fed: set[str] = set()  # customers this run fed with their subscription
    try:
        for phase in phases[phases.index(start_phase) :]:
            for page, asked_at in _pages(reader, shape, phase, after, reread):
                # A second before the page was asked for: a change the provider made after it built the
                # page has an event time of that second or later, so its webhook outranks the snapshot.
                times = ReadTimes(page=int(asked_at) - 1, run=checkpoint.started)
                for obj in page:
                    _feed(feeder, shape, phase, obj, times, fed)
                if not feeder.dry_run:
                    checkpoint.save(
                        phase, page[-1]["id"], reader.position() if shape.numbered else shape.reread(page[-1])
                    )
                if reporter:
                    reporter.update(_summary(reader, feeder))
                if stop is not None and stop.is_set():
                    interrupted = True
                    break
            if interrupted:
                break
            after, reread = None, {}
            if not feeder.dry_run and phase != phases[-1]:
                checkpoint.save(phases[phases.index(phase) + 1], None)
    except Interrupted:  # asked while the reader waited for its next read: the checkpoint has the last page fed
        interrupted = True
    if not interrupted and not feeder.dry_run:
        checkpoint.clear()
    return {**_summary(reader, feeder), "resumed": resumed is not None, "interrupted": interrupted}


def _pages(
    reader: Any, shape: Shape, phase: str, after: str | None, reread: dict[str, Any]
) -> Iterator[tuple[list[dict[str, Any]], float]]:
    """The pages of `phase` after the object `after`, each with the time its request was sent; when the
    list no longer holds `after`, those that `reread` (Shape.reread of that object) selects. Each
    fallback follows a page read since, so a cursor that is gone is never asked for twice."""
    params = shape.params.get(phase, {})
    query = {**params, **reread} if shape.numbered else params  # numbered: reread is the position saved
    while True:
        try:
            for page in reader.pages(phase, query, after):
                yield page, reader.asked_at
                after, reread = page[-1]["id"], shape.reread(page[-1])
            return
        except CursorGone:
            query, after, reread = {**params, **reread}, None, {}


def _feed(feeder: Feeder, shape: Shape, phase: str, obj: dict[str, Any], times: ReadTimes, fed: set[str]) -> None:
    if phase == "customers":
        if obj["id"] not in fed:
            feeder.event(shape.snapshot(phase, obj, times))
        return
    owner = obj.get("customer")
    together = []
    if isinstance(owner, dict):  # expanded: fed once, with the subscription
        obj = {**obj, "customer": owner["id"]}
        if owner["id"] not in fed and not owner.get("deleted"):
            together.append(shape.snapshot("customers", owner, times))
            fed.add(owner["id"])
    feeder.events_together([*together, shape.snapshot(phase, obj, times)])


def _summary(reader: Any, feeder: Feeder) -> dict[str, Any]:
    return {**feeder.tally.as_dict(), "api_calls": reader.calls, "rate_limited": reader.rate_limited}
