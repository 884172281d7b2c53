"""Per-user ordering and coalescing: one delivery per user at a time, merged updates, and
last-writer-wins by event time.

Stripe does not order deliveries and retries reorder them, so an older event can reach the
worker after a newer one; and under backlog many events for one user wait together. Each job
parks its update under its user and, in the same step, takes the user's lease (so two jobs never
race each other to User.com) and every update parked for that user; it merges them (per
attribute the value with the newest event time, tags united) and claims, per attribute, the
right to write: only values not older than the last one sent are sent, and their event time is
recorded in the same step (taken alone, an update is claimed with the lease). One PUT then
carries what many events said, and its outcome is counted as the lease ends.

Nothing is lost: an event's own job keeps running (put back, retried) until the event's outcome
is counted, and parks its update again each time, so updates taken by a job that died come back.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from service.core.update import UserUpdate
from service.store import keys
from service.store.ledger import Settled, Store

LEASE_MS = 60_000  # longer than one job's User.com calls with their timeouts
WAIT_FOR_LEASE_SECONDS = 2.0  # then the job is put back instead of holding the worker
POLL_SECONDS = 0.01

# Last-writer-wins: of the (attribute name, event time) pairs in ARGV from `first` on, the
# attributes not older than the value last written, whose times are recorded now.
_CLAIM_LUA = """
local function claim(last_written, ttl, first)
    local fresh = {}
    for i = first, #ARGV, 2 do
        local last = tonumber(redis.call('HGET', last_written, ARGV[i]) or '-1')
        if last <= tonumber(ARGV[i + 1]) then
            redis.call('HSET', last_written, ARGV[i], ARGV[i + 1])
            table.insert(fresh, ARGV[i])
        end
    end
    if #ARGV >= first then redis.call('EXPIRE', last_written, ttl) end
    return fresh
end
"""

# KEYS: lock, last_written. ARGV: token, lease_ms, lww_ttl, then pairs of attribute name, event time.
# Returns nil when another job holds the user, else the attributes that may be written.
CLAIM_SCRIPT = (
    _CLAIM_LUA
    + """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return false end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return claim(KEYS[2], ARGV[3], 4)
"""
)

# KEYS: lock. ARGV: token. Releases only our own lease.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: parked, then one outcome key per update. ARGV: event id, update JSON, per update.
# Parks the updates whose outcome is not counted yet; returns how many were parked.
PARK_SCRIPT = """
local parked = 0
for i = 2, #KEYS do
    if redis.call('EXISTS', KEYS[i]) == 0 then
        redis.call('HSET', KEYS[1], ARGV[2 * i - 3], ARGV[2 * i - 2])
        parked = parked + 1
    end
end
return parked
"""

# KEYS: parked, lock, the update's outcome key, last_written, the destination's memory of the user.
# ARGV: token, lease_ms, event id, update JSON, outcome key prefix ("relay:outcome:<source>:"),
# lww_ttl, '1' to read the memory, then the update's pairs of attribute name, event time.
# Parks the update, takes the user's lease and every update parked for the user, leaving out those
# whose outcome is counted meanwhile. Returns 0 when the update's own outcome is counted already,
# nil when another job holds the user (the update stays parked for it), else {the JSON of each
# other update taken, the attributes claimed (as CLAIM_SCRIPT) when there was none (else nil), the
# memory (or nil)}: without a backlog, one round trip.
BEGIN_SCRIPT = (
    _CLAIM_LUA
    + """
if redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('HDEL', KEYS[1], ARGV[3])
    return 0
end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return false end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
local all = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
local others = {}
for i = 1, #all, 2 do
    if all[i] ~= ARGV[3] and redis.call('EXISTS', ARGV[5] .. all[i]) == 0 then table.insert(others, all[i + 1]) end
end
local memory = ARGV[7] == '1' and redis.call('GET', KEYS[5])
if #others == 0 then return {others, claim(KEYS[4], ARGV[6], 8), memory} end
return {others, false, memory}
"""
)


class UserBusy(Exception):
    """Another job is delivering to this user; try again shortly."""


@dataclass
class Merged:
    """Many updates for one user as one: per attribute the newest value, tags united."""

    standard: dict[str, tuple[Any, int]] = field(default_factory=dict)  # name -> (value, event time)
    custom: dict[str, tuple[Any, int]] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)

    def times(self) -> dict[str, int]:
        return {name: t for name, (_, t) in (*self.standard.items(), *self.custom.items())}


def merge(updates: list[UserUpdate]) -> Merged:
    merged = Merged()
    for update in sorted(updates, key=lambda u: (u.event_time, u.event_id)):  # later wins a tie
        for target, values in ((merged.standard, update.standard), (merged.custom, update.custom)):
            for name, value in values.items():
                target[name] = (value, update.event_time)
        merged.tags += [tag for tag in update.tags if tag not in merged.tags]
    return merged


class Hold:
    """A user's lease, held, with the other updates taken for the user: claim what may be written, put
    back on failure. The lease ends with the block, or earlier with the outcomes (`settle`)."""

    def __init__(
        self,
        ordering: Ordering,
        source: str,
        user_id: str,
        hint: str,
        token: str,
        others: list[UserUpdate],
        claimed: list[bytes] | None,
        memory_key: str | None,
        memory: str | None,
    ) -> None:
        self._ordering = ordering
        self._source = source
        self._user_id = user_id
        self._hint = hint
        self._token = token
        self.others = others  # the other updates taken for the user, to merge with its own
        self._claimed = claimed  # claimed with the lease, when the update was taken alone
        self._memory_key = memory_key
        self.memory = memory  # what the destination keeps about the user (Destination.memory_key)
        self.released = False

    def settle(
        self,
        store: Store,
        outcomes: list[tuple[UserUpdate, str]],
        memory: str | None = None,
        slots: list[str] | None = None,
    ) -> list[Settled]:
        """Count the outcomes (Store.settle), end the lease, keep the destination's new memory of
        the user (None: unchanged, '': forget) and release the call slots held, in one step."""
        lease = self._ordering.keys.user_lock(self._source, self._user_id), self._token
        keep = None
        if memory is not None and self._memory_key is not None and memory != self.memory:
            keep = (self._memory_key, memory, self._ordering.memory_ttl)
        settled = store.settle(outcomes, lease, keep, slots)
        self.released = True
        if slots:
            slots.clear()
        return settled

    def claim(self, merged: Merged) -> tuple[dict[str, Any], dict[str, Any]]:
        """The standard and custom attributes not superseded by a newer value already sent."""
        allowed, self._claimed = self._claimed, None
        if allowed is None:
            pairs = [x for name, t in merged.times().items() for x in (name, t)]
            allowed = self._ordering._run_claim(self._source, self._user_id, self._token, pairs)
        if allowed is None:  # pragma: no cover - our own lease expired under us
            raise UserBusy(f"lease on user {self._user_id} was lost")
        names = {name.decode() for name in allowed}
        return (
            {k: v for k, (v, _) in merged.standard.items() if k in names},
            {k: v for k, (v, _) in merged.custom.items() if k in names},
        )

    def restore(self, updates: list[UserUpdate]) -> None:
        self._ordering.park(self._hint, updates)


class Ordering:
    def __init__(self, redis: Redis, *, memory_ttl_seconds: int, destination_keys: keys.Keys) -> None:
        self.redis = redis
        self.keys = destination_keys
        self.memory_ttl = memory_ttl_seconds  # of last-written times and of destinations' memories
        self._claim = redis.register_script(CLAIM_SCRIPT)
        self._release = redis.register_script(RELEASE_SCRIPT)
        self._park = redis.register_script(PARK_SCRIPT)
        self._begin = redis.register_script(BEGIN_SCRIPT)

    def park(self, hint: str, updates: list[UserUpdate]) -> int:
        """Park updates under their intake hint (UserUpdate.hint), except those already settled."""
        if not updates:
            return 0
        source = updates[0].source
        script_keys = [self.keys.parked(source, hint), *(self.keys.outcome(u.source, u.event_id) for u in updates)]
        args = [x for u in updates for x in (u.event_id, _dumps(u))]
        return int(self._park(keys=script_keys, args=args))

    def _run_claim(self, source: str, user_id: str, token: str, pairs: list[Any]) -> Any:
        script_keys = [self.keys.user_lock(source, user_id), self.keys.last_written(source, user_id)]
        return self._claim(keys=script_keys, args=[token, LEASE_MS, self.memory_ttl, *pairs])

    @contextmanager
    def hold(self, update: UserUpdate, user_id: str, hint: str, memory_key: str | None = None) -> Iterator[Hold | None]:
        """Park the update under `hint` and hold its user's lease for the block, with every update
        parked there; None when the update's outcome is counted already (nothing to do). Raises
        UserBusy if another job keeps the lease too long (the update stays parked for it)."""
        source = update.source
        script_keys = [
            self.keys.parked(source, hint),
            self.keys.user_lock(source, user_id),
            self.keys.outcome(source, update.event_id),
            self.keys.last_written(source, user_id),
            memory_key or self.keys.last_written(source, user_id),  # unused without a memory key
        ]
        token = uuid.uuid4().hex
        args = [token, LEASE_MS, update.event_id, _dumps(update), self.keys.outcome(source, ""), self.memory_ttl]
        args.append("1" if memory_key else "0")
        args += [x for name, t in merge([update]).times().items() for x in (name, t)]
        deadline = time.monotonic() + WAIT_FOR_LEASE_SECONDS
        while (taken := self._begin(keys=script_keys, args=args)) is None:
            if time.monotonic() > deadline:
                raise UserBusy(f"user {user_id} is being updated by another job")
            time.sleep(POLL_SECONDS)
        if taken == 0:
            yield None
            return
        others = [UserUpdate.from_dict(json.loads(raw)) for raw in taken[0]]
        memory = taken[2].decode() if taken[2] is not None else None
        hold = Hold(self, source, user_id, hint, token, others, taken[1], memory_key, memory)
        try:
            yield hold
        finally:
            if not hold.released:
                self._release(keys=[self.keys.user_lock(source, user_id)], args=[token])


def _dumps(update: UserUpdate) -> str:
    return json.dumps(update.to_dict(), separators=(",", ":"))
