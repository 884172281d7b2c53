"""The dead-letter queue: what could not be delivered, kept for operators to inspect and replay.

Items live in one hash (id -> JSON) indexed by a sorted set (id by time of failure), with
counts by reason beside them. Retention is bounded by age and by count; what retention drops
is counted (`relay:dlq:dropped`), never silent. Every change is one Lua script, so the hash,
the index, the counts and the ledger never disagree.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from redis import Redis

from service.core.dead_letter import DlqFilter
from service.store import keys

# Items retention removes in one script call: each is read back (for its reason), so an uncapped trim
# of a lowered RELAY_DLQ_MAX_ITEMS (91k -> 10k) held Redis for seconds. TRIM_BATCH bounds a TRIM_SCRIPT
# call (DeadLetterQueue.trim calls it again until done); KEEP_TRIM_BATCH bounds the trim a dead letter
# makes (dlq_keep, in the workers' scripts): one in, up to that many out, so a full queue still shrinks.
TRIM_BATCH = 1000
KEEP_TRIM_BATCH = 100

# Lua shared by every script that touches the DLQ. `dlq` is a table of a destination's four DLQ
# keys (Keys.dlq): {items, index, reasons, dropped}; one dead-letter queue per destination.
DLQ_LUA = (
    f"local DLQ_KEEP_TRIM_BATCH = {KEEP_TRIM_BATCH}\n"
    + """
local function dlq_remove(dlq, id)
    local items, index, reasons = dlq[1], dlq[2], dlq[3]
    local old = redis.call('HGET', items, id)
    if not old then return nil end
    redis.call('HDEL', items, id)
    redis.call('ZREM', index, id)
    local reason = cjson.decode(old)['reason']
    if redis.call('HINCRBY', reasons, reason, -1) <= 0 then redis.call('HDEL', reasons, reason) end
    return old
end
-- Retention: first what is older than the cutoff, then the oldest beyond max_items; counted.
-- At most `batch` items a call (each is read back for its reason), so a lowered RELAY_DLQ_MAX_ITEMS
-- never holds Redis for seconds: repeated calls finish the trim (DeadLetterQueue.trim loops).
local function dlq_trim(dlq, max_items, cutoff, batch)
    local index, dropped_key = dlq[2], dlq[4]
    local dropped = 0
    -- An index entry without its item (never made by these scripts) goes too: left, it would be trimmed
    -- again at every call, and DeadLetterQueue.trim would loop for good.
    local function drop(id)
        if not dlq_remove(dlq, id) then redis.call('ZREM', index, id) end
        dropped = dropped + 1
    end
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', '(' .. cutoff, 'LIMIT', 0, batch)) do drop(id) end
    local excess = math.min(redis.call('ZCARD', index) - tonumber(max_items), batch - dropped)
    if excess > 0 then
        for _, id in ipairs(redis.call('ZRANGE', index, 0, excess - 1)) do drop(id) end
    end
    if dropped > 0 then redis.call('INCRBY', dropped_key, dropped) end
    return dropped
end
local function dlq_keep(dlq, id, item, reason, score, max_items, cutoff)
    local items, index, reasons = dlq[1], dlq[2], dlq[3]
    dlq_remove(dlq, id)
    redis.call('HSET', items, id, item)
    redis.call('ZADD', index, score, id)
    redis.call('HINCRBY', reasons, reason, 1)
    dlq_trim(dlq, max_items, cutoff, DLQ_KEEP_TRIM_BATCH)
end
"""
)

# Retention: drop what is older than the cutoff, then the oldest beyond max_items.
# KEYS: dlq_items, dlq_index, dlq_reasons, dlq_dropped (Keys.dlq)
# ARGV: max_items, cutoff (Retention.args), batch (at most this many dropped now: TRIM_BATCH)
# Returns: dropped (how many items were dropped now; `batch` when more may be left to drop)
TRIM_SCRIPT = (
    DLQ_LUA
    + """
local dlq_items = KEYS[1]
local dlq_index = KEYS[2]
local dlq_reasons = KEYS[3]
local dlq_dropped = KEYS[4]
local max_items = ARGV[1]
local cutoff = ARGV[2]
local batch = tonumber(ARGV[3])

return dlq_trim({dlq_items, dlq_index, dlq_reasons, dlq_dropped}, max_items, cutoff, batch)
"""
)

# Delete an item. Deleting does not change the ledger: the event's outcome stays "dead_lettered";
# it is only no longer kept.
# KEYS: dlq_items, dlq_index, dlq_reasons, dlq_dropped (Keys.dlq)
# ARGV: dlq_id
# Returns: 1 (deleted) | 0 (no such item)
DELETE_SCRIPT = (
    DLQ_LUA
    + """
local dlq_items = KEYS[1]
local dlq_index = KEYS[2]
local dlq_reasons = KEYS[3]
local dlq_dropped = KEYS[4]
local dlq_id = ARGV[1]

return dlq_remove({dlq_items, dlq_index, dlq_reasons, dlq_dropped}, dlq_id) and 1 or 0
"""
)


# How long a bulk replay's memory of the ids it gave (DeadLetterQueue.remember) outlives its last batch.
REMEMBER_SECONDS = 3600


@dataclass(frozen=True)
class Position:
    """Where a scan stands: it ends at score `end` (the newest when it began) and has given items up
    to the score `after` (the ids of that score it gave are remembered: `scan_from`)."""

    end: float
    after: float | None = None


@dataclass(frozen=True)
class Retention:
    max_items: int
    ttl_seconds: int

    def args(self, now: float | None = None) -> list[Any]:
        return [self.max_items, (time.time() if now is None else now) - self.ttl_seconds]


class DeadLetterQueue:
    """One destination's dead letters. Nothing here holds more than a page of items: listing, counting
    and the bulk operations (service.operator) read the queue a page at a time (PAGE_SCAN ids), and
    what the index or the counts by reason answer is never read item by item."""

    PAGE_SCAN = 500  # ids read per round trip while filtering

    def __init__(self, redis: Redis, retention: Retention, destination_keys: keys.Keys) -> None:
        self.redis = redis
        self.retention = retention
        self.keys = destination_keys
        self._items, self._index, self._reasons, self._dropped = destination_keys.dlq
        self._trim_script = redis.register_script(TRIM_SCRIPT)
        self._delete_script = redis.register_script(DELETE_SCRIPT)

    def trim(self) -> int:
        """Apply retention now, TRIM_BATCH items a script call (Redis serves others between calls)."""
        dropped = 0
        while True:
            max_items, cutoff = self.retention.args()
            now = self._run_trim(dlq=self.keys.dlq, max_items=max_items, cutoff=cutoff, batch=TRIM_BATCH)
            dropped += now
            if now < TRIM_BATCH:
                return dropped

    def get(self, item_id: str) -> dict[str, Any] | None:
        raw = self.redis.hget(self._items, item_id)
        return json.loads(raw) if raw is not None else None

    def delete(self, item_id: str) -> bool:
        return self._run_delete(dlq=self.keys.dlq, dlq_id=item_id)

    def count(self, flt: DlqFilter) -> int:
        """How many items match, reading none when the index (times) or the counts by reason answer."""
        if _by_index(flt):
            if flt.since is None and flt.until is None:
                return int(self.redis.zcard(self._index))
            return int(self.redis.zcount(self._index, *_score_range(flt)))
        if _by_reason(flt):
            return int(self.redis.hget(self._reasons, flt.reason or "") or 0)
        return sum(1 for _ in self.scan(flt))

    def matching(
        self, flt: DlqFilter, *, offset: int = 0, limit: int | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """A page of the items matching the filter, oldest failure first, and the total matching.

        Holds the page only. With no filter but times, the page is read by position and the total is
        the index's; with a reason only, the total is its count and the scan stops once the page is
        full; any other filter scans the whole queue, counting what it does not keep.
        """
        if _by_index(flt):
            return self._page_by_index(flt, offset, limit)
        known = self.count(flt) if _by_reason(flt) else None
        page: list[dict[str, Any]] = []
        total = 0
        for item in self.scan(flt):
            if total >= offset and (limit is None or len(page) < limit):
                page.append(item)
            total += 1
            if known is not None and len(page) == limit:
                return page, known  # the page is full: its reason's count is the total
        return page, total

    def scan(self, flt: DlqFilter, *, once_each: bool = False) -> Iterator[dict[str, Any]]:
        """The items matching the filter, oldest failure first, read a page per round trip.

        The queue may change during the scan (retention, workers, other operators): every item that
        stays in it throughout is seen exactly once. The scan ends at the newest item there when it
        began: an item dead-lettered since (a new one, or one a bulk replay replayed that failed
        again) is left for the next scan, so a replay of everything ends. `once_each` (a replay's scan)
        also remembers the ids it gave (ids only, not items): a failure dated by a clock behind the
        newest item's writer sorts again before the end, and a replay must never take an item twice.
        """
        start = self.begin(flt)
        if start is not None:
            yield from (item for item, _ in self.scan_from(flt, start, once_each=once_each))

    def begin(self, flt: DlqFilter) -> Position | None:
        """Where a scan of the filter's items starts: before the oldest, ending at the newest there
        now (None: nothing matches its times)."""
        low, high = _score_range(flt)
        newest = self.redis.zrevrangebyscore(self._index, high, low, start=0, num=1, withscores=True)
        return Position(end=newest[0][1]) if newest else None

    def scan_from(
        self, flt: DlqFilter, start: Position, *, once_each: bool = False, remembered: str | None = None
    ) -> Iterator[tuple[dict[str, Any], Position]]:
        """`scan` from a position (a bulk replay's next batch), each item with the position after it.
        `remembered`: a set of the ids given earlier (`remember`), which are not given again."""
        seen: set[bytes] = set()
        for page in self._id_pages(flt, start):
            entries = [(item_id, score) for item_id, score in page if item_id not in seen]
            if remembered is not None and entries:
                given = self.redis.smismember(remembered, [item_id for item_id, _ in entries])
                entries = [entry for entry, known in zip(entries, given, strict=True) if not known]
            if not entries:
                continue
            if once_each:
                seen.update(item_id for item_id, _ in entries)
            raws = self.redis.hmget(self._items, [item_id for item_id, _ in entries])
            for (_, score), raw in zip(entries, raws, strict=True):
                if raw is None:
                    continue
                item = json.loads(raw)
                if flt.matches(item):
                    yield item, Position(end=start.end, after=score)

    def remember(self, key: str, ids: list[str]) -> None:
        """Note ids a bulk replay gave (its `remembered` set, kept REMEMBER_SECONDS after the last note; a
        marker keeps an operation's set alive while empty)."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(key, "", *ids)
            pipe.expire(key, REMEMBER_SECONDS)
            pipe.execute()

    def _page_by_index(self, flt: DlqFilter, offset: int, limit: int | None) -> tuple[list[dict[str, Any]], int]:
        low, high = _score_range(flt)
        with self.redis.pipeline(transaction=True) as pipe:  # the page and the total at one instant
            pipe.zrangebyscore(self._index, low, high, start=offset, num=-1 if limit is None else limit)
            pipe.zcount(self._index, low, high)
            ids, total = pipe.execute()
        raws = self.redis.hmget(self._items, ids) if ids else []
        return [json.loads(raw) for raw in raws if raw is not None], int(total)

    def _id_pages(self, flt: DlqFilter, start: Position) -> Iterator[list[tuple[bytes, float]]]:
        """The index's ids and scores within the filter's times, a page per round trip, in the index's
        order, from the score `start.after` (inclusive) up to `start.end`.

        Pages continue from a score, never from a position: removing an item ahead of the scan
        (retention trimming a full queue, another operator's replay) shifts every position after
        it, and the item at a page boundary would never be seen. A full page stops short of its
        last score, which the next page starts at; a page of one score is followed by every id
        of that score at once, then by what lies beyond it.
        """
        low, high = _score_range(flt)
        # Within the filter's times whatever the position says (a cursor comes back from a client).
        high = start.end if flt.until is None else min(start.end, flt.until)
        if start.after is not None and (flt.since is None or start.after > flt.since):
            low = start.after  # inclusive: its score's ids given already are in the scan's `remembered`
        while True:
            entries = self.redis.zrangebyscore(self._index, low, high, start=0, num=self.PAGE_SCAN, withscores=True)
            if len(entries) < self.PAGE_SCAN:
                yield entries
                return
            last = entries[-1][1]
            before = [entry for entry in entries if entry[1] < last]
            if before:
                yield before
                low = last
            else:
                yield self.redis.zrangebyscore(self._index, last, last, withscores=True)
                low = f"({last!r}"

    def summary(self) -> dict[str, Any]:
        reasons = {k.decode(): int(v) for k, v in self.redis.hgetall(self._reasons).items()}
        dropped = int(self.redis.get(self._dropped) or 0)
        return {"size": sum(reasons.values()), "by_reason": reasons, "dropped_by_retention": dropped}

    # One wrapper per script, its parameters in the order of the script's header: KEYS, then ARGV.

    def _run_trim(self, *, dlq: list[str], max_items: int, cutoff: float, batch: int) -> int:
        """`dlq`: dlq_items, dlq_index, dlq_reasons, dlq_dropped (Keys.dlq)."""
        return int(self._trim_script(keys=dlq, args=[max_items, cutoff, batch]))

    def _run_delete(self, *, dlq: list[str], dlq_id: str) -> bool:
        """`dlq`: dlq_items, dlq_index, dlq_reasons, dlq_dropped (Keys.dlq)."""
        return bool(self._delete_script(keys=dlq, args=[dlq_id]))


def _by_index(flt: DlqFilter) -> bool:
    """The filter selects by time of failure only: the index alone answers it."""
    return flt.reason is None and flt.event_type is None and flt.user_id is None


def _by_reason(flt: DlqFilter) -> bool:
    """The filter is a reason only: its count by reason is the total."""
    return flt.reason is not None and flt == DlqFilter(reason=flt.reason)


def _score_range(flt: DlqFilter) -> tuple[float | str, float | str]:
    return ("-inf" if flt.since is None else flt.since), ("+inf" if flt.until is None else flt.until)
