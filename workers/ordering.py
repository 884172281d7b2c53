"""Per-user ordering: one delivery per user at a time, and last-writer-wins by (event time, event id),
whichever source the user's events come from.

Intake merges every update into its user's pending state (service/store/ledger_state.py: per
attribute the newest value by event time, tags united, the events merged in) and queues the user
once. A delivery job takes the user's lease and, in the same step, the pending state into its
in-hand state (merged with what a previous run left there: its worker died, or a retry). It claims,
per attribute, the right to write: only values at least as new as the last one sent go out, in the
merge's order (event time, then event id: two events of one second end the same whether merged or sent
apart), and their event time and id are recorded in the same step. One PUT carries what many events
said; the outcome of each event is counted as the lease ends (Store.settle_user).

The lease is short and renewed while the delivery runs (one thread renews all of a process's
leases: workers/lease_renewer.py), so a user whose worker was SIGKILLed is free again within
LEASE_MS; whatever it held in hand waits for the job's re-run (or the next job).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis import Redis

from service.core.update import UserUpdate
from service.sources.registry import SOURCES
from service.store import keys
from service.store.ledger import Settled, Store
from service.store.ledger_state import PendingState, decode, event_value, update_fields
from service.store.ledger_user import EventOutcome, SettleUser
from service.store.ledger_user_scripts import SETTLE_USER_SCRIPT
from service.store.ordering_scripts import CLAIM_SCRIPT, PARK_SCRIPT, RELEASE_SCRIPT, RENEW_SCRIPT, TAKE_SCRIPT
from service.store.trace import TraceEntry
from workers.lease_renewer import LeaseRenewer
from workers.scripts_at_once import ScriptCall, run_at_once

log = logging.getLogger(__name__)
# Renewed every third of it while the delivery runs; no longer than a job's heartbeat lives
# (workers/heartbeat.py), so when rq re-runs a dead worker's job the user is free again.
LEASE_MS = 6_000
WAIT_FOR_LEASE_SECONDS = 2.0  # then the job is put back instead of holding the worker
POLL_SECONDS = 0.01


class UserBusy(Exception):
    """Another job is delivering to this user; try again shortly."""


class Hold:
    """A user's lease, held, with the user's in-hand state: claim what may be written, count the
    outcomes. The lease ends with the block, or earlier with the outcomes (`settle`)."""

    def __init__(
        self, ordering: Ordering, source: str, hint: str, user_id: str, token: str, state: PendingState, memory: Any
    ) -> None:
        self._ordering = ordering
        self.source = source
        self.hint = hint
        self.user_id = user_id
        self._token = token
        self.state = state
        self.memory = memory  # what the destination keeps about the user (Destination.memory_key)
        self.memory_key: str | None = None
        self.released = False

    @property
    def lock(self) -> str:
        return self._ordering.keys.user_lock(self.user_id)

    def check_lease(self) -> None:
        """Raise UserBusy unless the lease surely runs a while yet (LeaseRenewer.fresh): a call made once
        it lapsed could overwrite what another job has sent the user since."""
        if not self._ordering.renewer.fresh(self.lock, self._token):
            # This process was paused, or its renewals failed, for seconds: worth an operator's look.
            log.warning("user %s: its lease may have lapsed (not renewed in time): not called, put back", self.user_id)
            raise UserBusy(f"lease on user {self.user_id} may have lapsed (not renewed in time)")

    def claim(self, state: PendingState, *also: ScriptCall) -> tuple[set[str] | None, list[Any]]:
        """The attributes not superseded by a newer value already sent (None: our lease was lost, as
        UserBusy), and the answers of the scripts `also` sent in the same round trip (after the claim:
        e.g. the call's slot booked)."""
        allowed, *answers = run_at_once(self._ordering.redis, [self.claim_call(state), *also])
        return None if allowed is None else {name.decode() for name in allowed}, answers

    def claim_call(self, state: PendingState) -> ScriptCall:
        ordering = self._ordering
        return ordering.claim_call(
            lock=self.lock,
            last_written=ordering.keys.last_written(self.source, self.user_id),
            others=[ordering.keys.last_written(s, self.user_id) for s in SOURCES if s != self.source],
            token=self._token,
            lease_ms=LEASE_MS,
            lww_ttl=ordering.memory_ttl,
            pairs=list(state.order_keys().items()),
        )

    def settle(
        self,
        store: Store,
        outcomes: list[EventOutcome],
        memory: str | None = None,
        slots: list[str] | None = None,
        trace: TraceEntry | None = None,
    ) -> list[Settled] | None:
        """Count the outcomes, end the lease, keep the destination's new memory of the user (None:
        unchanged, '': forget), release the call slots held and trace, in one step."""
        settled = store.settle_user(self.settlement(outcomes, memory, slots, trace))
        self.released = True
        if slots:
            slots.clear()
        return settled

    def settlement(
        self,
        outcomes: list[EventOutcome],
        memory: str | None = None,
        slots: list[str] | None = None,
        trace: TraceEntry | None = None,
    ) -> SettleUser:
        """What `settle` counts (Store.settle_user), for counting several users' at once (Ordering.settle_many)."""
        keep = None
        ttl = self._ordering.destination_memory_ttl
        # A memory kept for good (ttl 0) is written again unchanged: one from a release that gave it a TTL
        # loses it at the user's next delivery.
        if memory is not None and self.memory_key is not None and (memory != self.memory or (ttl == 0 and memory)):
            keep = (self.memory_key, memory, ttl)
        return SettleUser(self.source, self.hint, outcomes, (self.lock, self._token), keep, list(slots or []), trace)


class Ordering:
    def __init__(
        self, redis: Redis, *, memory_ttl_seconds: int, destination_keys: keys.Keys, memory_expires: bool = True
    ) -> None:
        self.redis = redis
        self.keys = destination_keys
        self.memory_ttl = memory_ttl_seconds  # of last-written times, and of a destination's memory (0: none)
        self.destination_memory_ttl = memory_ttl_seconds if memory_expires else 0
        self._claim_script = redis.register_script(CLAIM_SCRIPT)
        self._release_script = redis.register_script(RELEASE_SCRIPT)
        self._park_script = redis.register_script(PARK_SCRIPT)
        self._take_script = redis.register_script(TAKE_SCRIPT)
        self._settle_script = redis.register_script(SETTLE_USER_SCRIPT)  # Store.settle_user's, for settle_many
        # One thread renews every lease this process holds (workers/lease_renewer.py).
        self.renewer = LeaseRenewer(redis.register_script(RENEW_SCRIPT), lease_ms=LEASE_MS)

    def park(self, update: UserUpdate, hint: str) -> bool:
        """Park an update carried by a per-event job (queued before the upgrade) in its user's
        pending state, unless its outcome is counted already or it is pending already."""
        return bool(
            self._park_script(
                keys=[
                    self.keys.user_state(update.source, hint),
                    self.keys.in_hand(update.source, hint),
                    self.keys.outcome(update.source, update.event_id),
                ],
                args=[
                    f"e:{update.event_id}",
                    event_value(update, time.time(), legacy=True),
                    *update_fields(update, hint),
                ],
            )
        )

    def pending(self, source: str, hint: str, event_id: str) -> bool:
        """Whether the event is pending for the user: in its state, or in hand."""
        field = f"e:{event_id}"
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hexists(self.keys.user_state(source, hint), field)
            pipe.hexists(self.keys.in_hand(source, hint), field)
            return any(pipe.execute())

    def take_many(self, users: list[tuple[str, str, str, str | None]]) -> list[Hold | None]:
        """Take several users' leases and states in one round trip, without waiting: per user (source, hint,
        user id, memory key) its Hold, or None when another job holds the user (or the same user came
        twice). The holds are renewed until settled or let go (`let_go`)."""
        tokens = [uuid.uuid4().hex for _ in users]
        locks = [self.keys.user_lock(user_id) for _, _, user_id, _ in users]
        calls = [
            self._take_call(source, hint, lock, memory_key, token)
            for (source, hint, _, memory_key), lock, token in zip(users, locks, tokens, strict=True)
        ]
        since = self.renewer.clock()
        answers = run_at_once(self.redis, calls)
        holds: list[Hold | None] = []
        try:
            for (source, hint, user_id, memory_key), token, taken in zip(users, tokens, answers, strict=True):
                hold = None if taken is None else self._held(source, hint, user_id, memory_key, token, taken, since)
                holds.append(hold)
        except BaseException:  # a state that cannot be read: the holds made so far are let go, not renewed
            self.let_go(holds)
            raise
        return holds

    def claim_many(self, claims: list[tuple[Hold, ScriptCall | None]]) -> list[tuple[set[str] | None, Any]]:
        """Several held users' claims (Hold.claim), each with a script of its own sent along, if any (a
        call slot booked), in one round trip: per user (allowed, that script's answer or None)."""
        calls: list[ScriptCall] = []
        for hold, also in claims:
            calls += [hold.claim_call(hold.state), *([also] if also else [])]
        answers = iter(run_at_once(self.redis, calls))
        result: list[tuple[set[str] | None, Any]] = []
        for _, also in claims:
            allowed = next(answers)
            result.append((None if allowed is None else {n.decode() for n in allowed}, next(answers) if also else None))
        return result

    def settle_many(self, store: Store, settles: list[tuple[Hold, SettleUser]]) -> list[list[Settled] | None]:
        """Count several users' outcomes, each as Hold.settle does, in one round trip."""
        calls = [ScriptCall(self._settle_script, s.script_keys(store), s.script_args(store)) for _, s in settles]
        answers = run_at_once(self.redis, calls)
        for hold, _ in settles:
            hold.released = True
            self.renewer.remove(hold.lock, hold._token)
        return [
            None if answer is None else [Settled(bool(counted), float(at) if at else None) for counted, at in answer]
            for answer in answers
        ]

    def let_go(self, holds: list[Hold | None]) -> None:
        """End the leases of the holds not settled (what they took stays in hand for the next job). All
        leave the renewer first: if a release fails (Redis gone), the leases not released end by
        themselves within LEASE_MS instead of being renewed for as long as this process runs."""
        held = [hold for hold in holds if hold is not None]
        for hold in held:
            self.renewer.remove(hold.lock, hold._token)
        for hold in held:
            if not hold.released:
                self._release_script(keys=[hold.lock], args=[hold._token])
                hold.released = True

    def _held(
        self, source: str, hint: str, user_id: str, memory_key: str | None, token: str, taken: Any, since: float
    ) -> Hold:
        fields, memory_raw = taken
        raw = dict(zip(fields[::2], fields[1::2], strict=True))
        memory = memory_raw.decode() if memory_raw is not None else None
        hold = Hold(self, source, hint, user_id, token, decode(raw), memory)
        hold.memory_key = memory_key
        self.renewer.add(hold.lock, token, since)
        return hold

    @contextmanager
    def hold(self, source: str, hint: str, user_id: str, memory_key: str | None = None) -> Iterator[Hold]:
        """Hold the user's lease for the block, with everything pending for the user in hand. Raises
        UserBusy if another job keeps the lease too long (what is pending stays for it)."""
        token = uuid.uuid4().hex
        lock = self.keys.user_lock(user_id)
        deadline = time.monotonic() + WAIT_FOR_LEASE_SECONDS
        while True:
            since = self.renewer.clock()
            if (taken := self._run_take(source, hint, lock, memory_key, token)) is not None:
                break
            if time.monotonic() > deadline:
                raise UserBusy(f"user {user_id} is being updated by another job")
            time.sleep(POLL_SECONDS)
        hold = self._held(source, hint, user_id, memory_key, token, taken, since)
        try:
            yield hold
        finally:
            self.renewer.remove(lock, token)
            if not hold.released:
                self._release_script(keys=[lock], args=[token])

    # One wrapper per script, its parameters in the order of the script's header: KEYS, then ARGV.

    def _run_take(self, source: str, hint: str, lock: str, memory_key: str | None, token: str) -> Any:
        call = self._take_call(source, hint, lock, memory_key, token)
        return call.script(keys=call.keys, args=call.args)

    def _take_call(self, source: str, hint: str, lock: str, memory_key: str | None, token: str) -> ScriptCall:
        return ScriptCall(
            self._take_script,
            [self.keys.user_state(source, hint), self.keys.in_hand(source, hint), lock, memory_key or lock],
            [token, LEASE_MS, "1" if memory_key else "0"],
        )

    def claim_call(
        self,
        *,
        lock: str,
        last_written: str,
        others: list[str],
        token: str,
        lease_ms: int,
        lww_ttl: int,
        pairs: list[tuple[str, str]],
    ) -> ScriptCall:
        """`pairs`: (attribute, "<event time>|<event id>" of the value to write: PendingState.order_keys);
        `others`: the last_written of the user's other sources (read, not written)."""
        return ScriptCall(
            self._claim_script,
            [lock, last_written, *others],
            [token, lease_ms, lww_ttl, *(x for pair in pairs for x in pair)],
        )
