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
from service.store.ordering_scripts import BEGIN_SCRIPT, CLAIM_SCRIPT, PARK_SCRIPT, RELEASE_SCRIPT
from service.store.trace import TraceEntry

LEASE_MS = 60_000  # longer than one job's User.com calls with their timeouts
WAIT_FOR_LEASE_SECONDS = 2.0  # then the job is put back instead of holding the worker
POLL_SECONDS = 0.01


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
        trace: TraceEntry | None = None,
    ) -> list[Settled]:
        """Count the outcomes (Store.settle), end the lease, keep the destination's new memory of
        the user (None: unchanged, '': forget), release the call slots held and trace, in one step."""
        lease = self._ordering.keys.user_lock(self._source, self._user_id), self._token
        keep = None
        if memory is not None and self._memory_key is not None and memory != self.memory:
            keep = (self._memory_key, memory, self._ordering.memory_ttl)
        settled = store.settle(outcomes, lease, keep, slots, trace)
        self.released = True
        if slots:
            slots.clear()
        return settled

    def claim(self, merged: Merged) -> tuple[dict[str, Any], dict[str, Any]]:
        """The standard and custom attributes not superseded by a newer value already sent."""
        allowed, self._claimed = self._claimed, None
        if allowed is None:
            ordering = self._ordering
            allowed = ordering._run_claim(
                lock=ordering.keys.user_lock(self._source, self._user_id),
                last_written=ordering.keys.last_written(self._source, self._user_id),
                token=self._token,
                lease_ms=LEASE_MS,
                lww_ttl=ordering.memory_ttl,
                pairs=list(merged.times().items()),
            )
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
        self._claim_script = redis.register_script(CLAIM_SCRIPT)
        self._release_script = redis.register_script(RELEASE_SCRIPT)
        self._park_script = redis.register_script(PARK_SCRIPT)
        self._begin_script = redis.register_script(BEGIN_SCRIPT)

    def park(self, hint: str, updates: list[UserUpdate]) -> int:
        """Park updates under their intake hint (UserUpdate.hint), except those already settled."""
        if not updates:
            return 0
        source = updates[0].source
        return self._run_park(
            parked=self.keys.parked(source, hint),
            outcome_keys=[self.keys.outcome(u.source, u.event_id) for u in updates],
            updates=[(u.event_id, _dumps(u)) for u in updates],
        )

    @contextmanager
    def hold(self, update: UserUpdate, user_id: str, hint: str, memory_key: str | None = None) -> Iterator[Hold | None]:
        """Park the update under `hint` and hold its user's lease for the block, with every update
        parked there; None when the update's outcome is counted already (nothing to do). Raises
        UserBusy if another job keeps the lease too long (the update stays parked for it)."""
        source = update.source
        token = uuid.uuid4().hex
        lock = self.keys.user_lock(source, user_id)
        last_written = self.keys.last_written(source, user_id)
        update_json = _dumps(update)
        pairs = list(merge([update]).times().items())

        def begin() -> Any:
            return self._run_begin(
                parked=self.keys.parked(source, hint),
                lock=lock,
                outcome_key=self.keys.outcome(source, update.event_id),
                last_written=last_written,
                memory_key=memory_key or last_written,  # unused without a memory key
                token=token,
                lease_ms=LEASE_MS,
                event_id=update.event_id,
                update_json=update_json,
                outcome_prefix=self.keys.outcome(source, ""),
                lww_ttl=self.memory_ttl,
                read_memory="1" if memory_key else "0",
                pairs=pairs,
            )

        deadline = time.monotonic() + WAIT_FOR_LEASE_SECONDS
        while (taken := begin()) is None:
            if time.monotonic() > deadline:
                raise UserBusy(f"user {user_id} is being updated by another job")
            time.sleep(POLL_SECONDS)
        if taken == 0:
            yield None
            return
        others_json, claimed, memory_raw = taken
        others = [UserUpdate.from_dict(json.loads(raw)) for raw in others_json]
        memory = memory_raw.decode() if memory_raw is not None else None
        hold = Hold(self, source, user_id, hint, token, others, claimed, memory_key, memory)
        try:
            yield hold
        finally:
            if not hold.released:
                self._run_release(lock=lock, token=token)

    # One wrapper per script, its parameters in the order of the script's header: KEYS, then ARGV.

    def _run_claim(
        self, *, lock: str, last_written: str, token: str, lease_ms: int, lww_ttl: int, pairs: list[tuple[str, int]]
    ) -> list[bytes] | None:
        """`pairs`: (attribute, event_time)."""
        return self._claim_script(
            keys=[lock, last_written], args=[token, lease_ms, lww_ttl, *(x for pair in pairs for x in pair)]
        )

    def _run_release(self, *, lock: str, token: str) -> int:
        return int(self._release_script(keys=[lock], args=[token]))

    def _run_park(self, *, parked: str, outcome_keys: list[str], updates: list[tuple[str, str]]) -> int:
        """`outcome_keys`, `updates` ((event_id, update_json)): one per update."""
        return int(self._park_script(keys=[parked, *outcome_keys], args=[x for pair in updates for x in pair]))

    def _run_begin(
        self,
        *,
        parked: str,
        lock: str,
        outcome_key: str,
        last_written: str,
        memory_key: str,
        token: str,
        lease_ms: int,
        event_id: str,
        update_json: str,
        outcome_prefix: str,
        lww_ttl: int,
        read_memory: str,
        pairs: list[tuple[str, int]],
    ) -> Any:
        """`pairs`: the update's (attribute, event_time)."""
        return self._begin_script(
            keys=[parked, lock, outcome_key, last_written, memory_key],
            args=[
                *(token, lease_ms, event_id, update_json, outcome_prefix, lww_ttl, read_memory),
                *(x for pair in pairs for x in pair),
            ],
        )


def _dumps(update: UserUpdate) -> str:
    return json.dumps(update.to_dict(), separators=(",", ":"))
