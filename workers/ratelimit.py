"""One rate limiter for every worker process of every pod: GCRA in Redis, on Redis' clock.

The configured rate (`USERCOM_RATE_LIMIT`) is a ceiling: the limiter keeps the receiver's sliding
window (no `floor(rate)` slots within one second plus JITTER_MS), and each 429 lowers the effective
rate for the whole cluster, which then grows back slowly (AIMD, service/store/limiter_scripts.py).

Each User.com call first takes a slot: the script checks the cluster-wide pause a 429 set,
the concurrency cap (`USERCOM_MAX_IN_FLIGHT` calls at once, leases that expire if a worker
dies) and the GCRA schedule (`USERCOM_RATE_LIMIT` per second, `USERCOM_BURST` at once), and
either books the next slot for the caller (now, or up to a second ahead: the caller sleeps until
it, and re-checks the pause if it slept) or says how long to wait. A short wait is slept; a long
one is handed back to the job, which is put back to run at that time instead of holding its worker.

A thread delivering a group of users (workers/delivery/group.py) books the slots of its next calls
with the first, while they are due now (a run: `booking(further=n)`; half the burst and half the
window at most), and its calls then go one after another without a round trip each, under the
first call's lease (one call in flight at a time). The run's n-th slot is entered in the window at
n x the pace of this process's calls after its booking (the time between a thread's calls, with a
margin: `_spacing`), and its call may come any time until RUN_FRESH_SECONDS after that (the sliding
window's JITTER_MS absorbs the time between a slot and its call's arrival) and RUN_MAX_SECONDS after
the booking; a call later than that finds the run stale. A run is used until then, until a 429
pauses this process, and until a call fails; whatever it did not use is given back with the next
booking, or by `end_run` after the group's calls. A run that only went stale is booked again by its
next call, due now, along with that call's own slot and in the same script that gives the stale
slots back: as many slots as it served calls while fresh (none when its calls are slower than its
freshness, as against a distant API: they would sit unused, held from other callers).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from service.config.settings import DEFAULT_RETRY_MAX_DELAY_SECONDS
from service.store import keys
from service.store.limiter_scripts import (
    ACQUIRE_SCRIPT,
    DECREASE_FACTOR,
    FLOOR_FRACTION,
    GIVE_BACK_SCRIPT,
    JITTER_MS,
    PAUSE_SCRIPT,
    PAUSED_SCRIPT,
    SHORTEN_PAUSE_SCRIPT,
    increase_per_second,
)
from workers.scripts_at_once import ScriptCall

log = logging.getLogger("relay.ratelimit")

DEFAULT_PAUSE_SECONDS = 5.0  # a 429 without Retry-After
MAX_SLEEP_SECONDS = 1.0  # longer waits go back to the queue
# A lane below live traffic (backfill) books a slot only when it is due (it sleeps until then without
# holding one: a live call that comes meanwhile goes first), books as if the burst were 1, spaces its
# calls on a schedule of its own that live calls do not wait behind (limiter_scripts.py), and leaves
# a share of each second's slots to live calls (BELOW_LIVE_RESERVE_SHARE, at least
# BELOW_LIVE_RESERVE_MIN: the window is a second plus JITTER_MS, so live calls at 1/s may have two in
# it; the lane keeps one slot of each window however low the rate): a live call then finds a slot
# at once. Its worker serves nothing else, so it may wait longer in place before its job goes back
# to the queue.
BELOW_LIVE_RESERVE_SHARE = 0.2
BELOW_LIVE_RESERVE_MIN = 2
BELOW_LIVE_MAX_SLEEP_SECONDS = 5.0
LEASE_MS = 30_000  # a call's concurrency lease at least; expires if its worker dies
LEASE_MARGIN_MS = 5_000  # beyond the longest call (LimitConfig.lease_ms)


def lease_ms_for(longest_call_seconds: float) -> int:
    return max(LEASE_MS, math.ceil(longest_call_seconds * 1000) + LEASE_MARGIN_MS)


# A run's slots are used within this long of their time in the window, or not at all (booked again
# then): of the JITTER_MS (40 ms) a call may arrive after its slot, this leaves 15 ms for the call to
# go out. (bench/drain, 2 cores: 0.37 bookings a delivery, against 1 without runs; 15 ms, counted
# from the answer then, left most runs half used.)
RUN_FRESH_SECONDS = 0.025
# A run's slots are spaced at its threads' pace (an average of the time between a thread's calls,
# each gap weighing PACE_WEIGHT; gaps over a second are not a pace) times PACE_MARGIN, so that its calls
# keep to their slots however the gaps vary; at most MAX_SPACING_SECONDS apart: the window counts a
# run's slots from its booking until a second after the last, held from other callers meanwhile,
# and calls slower than that are not worth a run (they go stale: none is booked again).
PACE_WEIGHT = 0.2
PACE_MARGIN = 3.0
MAX_PACE_SECONDS = 1.0
MAX_SPACING_SECONDS = 0.05
# A run serves no call this long after its booking, however its slots are spaced: a 429 another
# process saw reaches this one's runs only through the pause, so this bounds their calls after it.
RUN_MAX_SECONDS = 0.1


class Throttled(Exception):
    """No slot soon enough: run this job again after `wait` seconds."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"rate limited: next slot in {wait:.2f}s")
        self.wait = wait


@dataclass
class _Run:
    """Slots booked with a thread's call for its next calls (ACQUIRE's `further`)."""

    token: str  # the first call's lease: the run's calls, one at a time, are in flight under it
    booked: int  # slots booked for its calls (in the window as `<token>:<n>`, n from 1)
    sent_at: float  # time.monotonic() when its booking was sent
    spacing: float  # seconds between its slots' times in the window
    pauses: int  # the limiter's 429 count when its booking was sent (a renewal: decided): a later one ends it
    schedule: list[bytes]  # the arrival time after its slots, the interval (ms, as ACQUIRE said)
    ended: bool = False
    used: int = 0  # calls it served
    left: int = field(init=False)  # slots not used (nor given back) yet

    def __post_init__(self) -> None:
        self.left = self.booked

    def fresh(self, now: float) -> bool:
        """Whether its next slot may still be used: its call would reach the API within the jitter
        of the slot's time, and within RUN_MAX_SECONDS of the booking."""
        since = now - self.sent_at
        return since < min((self.used + 1) * self.spacing + RUN_FRESH_SECONDS, RUN_MAX_SECONDS)

    def renewal(self) -> int:
        """How many slots to book again with the next call, once stale: as many as it served while
        fresh (calls that fast will use them), no more than it has left; none when it served none
        (calls slower than its freshness would leave them unused, held from other callers)."""
        return min(self.left - 1, self.used)

    def give_back(self) -> list[Any]:
        """ACQUIRE's give_back arguments for the slots left (none are left afterwards)."""
        count, self.left = self.left, 0
        return [count, self.token, self.booked, *self.schedule] if count else []


@dataclass(frozen=True)
class LimitConfig:
    rate_per_second: float
    burst: int
    max_in_flight: int
    # A call's concurrency lease must outlast the longest call (connect + read timeout): a call still
    # waiting for its answer when its lease expired would no longer count, and one more would start.
    lease_ms: int = LEASE_MS
    # The longest pause a 429's Retry-After may ask for (RELAY_RETRY_MAX_DELAY_SECONDS): a proxy's odd
    # answer must not stop every worker of the destination for days.
    max_pause_seconds: float = DEFAULT_RETRY_MAX_DELAY_SECONDS


class RateLimiter:
    def __init__(
        self,
        redis: Redis,
        config: LimitConfig,
        *,
        sleep: float = MAX_SLEEP_SECONDS,
        destination_keys: keys.Keys,
        below_live: bool = False,
    ) -> None:
        self.redis = redis
        self.config = config
        self.max_sleep = max(sleep, BELOW_LIVE_MAX_SLEEP_SECONDS) if below_live else sleep
        self.below_live = below_live
        self._acquire = redis.register_script(ACQUIRE_SCRIPT)
        self._give_back = redis.register_script(GIVE_BACK_SCRIPT)
        self._pause = redis.register_script(PAUSE_SCRIPT)
        self._paused = redis.register_script(PAUSED_SCRIPT)
        self._shorten_pause = redis.register_script(SHORTEN_PAUSE_SCRIPT)
        self._held: ContextVar[list[str] | None] = ContextVar(f"held_slots_{id(self)}", default=None)
        # (token, answer) of a first booking attempt made with the delivery's claim (`booking`)
        self._booked: ContextVar[tuple[str, list[Any]] | None] = ContextVar(f"booked_{id(self)}", default=None)
        # slots of calls done, released with this thread's next booking (`release_with_next`)
        self._pending_release: ContextVar[list[str] | None] = ContextVar(f"pending_release_{id(self)}", default=None)
        self._run: ContextVar[_Run | None] = ContextVar(f"run_{id(self)}", default=None)
        # slots whose release Redis lost (`orphaned`): any thread's next booking releases them, the thread
        # that held them may be a batch's, gone with its batch
        self._orphans: list[str] = []
        self._orphans_lock = threading.Lock()
        # (token, when, the 429 count then, its run's spacing) of the booking in hand: a run counts from its sending
        self._booking: ContextVar[tuple[str, float, int, float] | None] = ContextVar(
            f"booking_{id(self)}", default=None
        )
        # this thread's last call (time.monotonic()), and the pace of this process's threads: seconds
        # between a thread's calls (PACE_WEIGHT), kept across batches (each has threads of its own)
        self._last_call: ContextVar[float | None] = ContextVar(f"last_call_{id(self)}", default=None)
        self._pace = 0.0
        self._pauses = 0  # 429s this process saw (pause): each ends every thread's run
        self._keys = destination_keys
        self._acquire_keys = [
            destination_keys.limiter_tat,
            destination_keys.limiter_paused_until,
            destination_keys.limiter_in_flight,
            destination_keys.limiter_window,
            destination_keys.limiter_rate,
            destination_keys.limiter_tat_below_live if below_live else destination_keys.limiter_tat,
        ]
        self.effective_rate = config.rate_per_second  # as last seen by this process
        self._logged_rate = config.rate_per_second

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one call's slot; raises Throttled when the wait would exceed max_sleep. Inside
        `released_later`, a call that returns keeps its slot for the caller to release."""
        held = self._held.get()
        booked = self._booked.get()
        run = self._run.get()
        self._keep_pace()
        if booked is not None:  # booked with the delivery's claim (booking)
            self._booked.set(None)
            token, first = booked
            if held is not None and token in held:
                held.remove(token)
        if held:  # an earlier call of the same delivery: one slot per delivery at a time
            self.release_with_next(held)
        give_back: list[Any] = []
        renew: tuple[int, int] | None = None
        if booked is None and held is not None and run is not None:
            if self._usable(run):
                run.left -= 1  # booked already: no round trip
                run.used += 1
                with self._call(run.token, held):
                    yield
                return
            if self._renewable(run):  # only stale: its next calls are booked again with this one
                renew = (run.renewal(), run.pauses)
            give_back = run.give_back()  # stale or ended: given back with this call's booking
        if booked is None:
            token, first = uuid.uuid4().hex, None
        self._book(token, first, give_back, renew)
        with self._call(token, held):
            yield

    @contextmanager
    def _call(self, token: str, held: list[str] | None) -> Iterator[None]:
        """A call under its slot's `token`: released if it raises, else kept in `held` (the
        delivery releases it with its outcome), or released at once outside released_later."""
        try:
            yield
        except BaseException:
            self._release([token])
            raise
        if held is None:
            self._release([token])
        else:
            held.append(token)

    def _usable(self, run: _Run) -> bool:
        return self._renewable(run) and run.fresh(time.monotonic())

    def _keep_pace(self) -> None:
        """Count the time since this thread's last call in the threads' pace (a run's spacing)."""
        now, last = time.monotonic(), self._last_call.get()
        self._last_call.set(now)
        if last is not None and now - last < MAX_PACE_SECONDS:
            gap, pace = now - last, self._pace  # threads may race here: one gap more or less counted
            self._pace = gap if pace == 0 else pace + PACE_WEIGHT * (gap - pace)

    def _spacing(self) -> float:
        """Seconds between a run's slots booked now: the threads' pace, with a margin."""
        return min(MAX_SPACING_SECONDS, PACE_MARGIN * self._pace)

    def _renewable(self, run: _Run) -> bool:
        """Not ended by a failed call or a 429 (its calls book their own slots then), nor used up."""
        return not run.ended and run.left > 0 and run.pauses == self._pauses

    @contextmanager
    def released_later(self) -> Iterator[list[str]]:
        """Calls in the block keep their slot (counted in flight) until the caller releases the
        tokens it is given, with a write of its own (Store.settle: a round trip less per delivery);
        whatever is still held when the block ends is released then."""
        held: list[str] = []
        reset = self._held.set(held)
        try:
            yield held
        finally:
            self._held.reset(reset)
            self._booked.set(None)
            self._release(held)

    def release_with_next(self, tokens: list[str]) -> None:
        """Release these slots (calls done) with this thread's next booking (a round trip less); what
        no booking took is returned by `unreleased`, for the caller to release with a write of its own."""
        pending = self._pending_release.get()
        if pending is None:
            pending = []
            self._pending_release.set(pending)
        pending += (token for token in tokens if token not in pending)  # a run's calls share one
        tokens.clear()

    def unreleased(self) -> list[str]:
        """The slots given to `release_with_next` that no booking released yet, and the process's
        orphaned ones (taken back)."""
        pending = self._pending_release.get() or []
        taken, pending[:] = list(pending), []
        with self._orphans_lock:
            taken += (token for token in self._orphans if token not in taken)
            self._orphans.clear()
        return taken

    def orphaned(self, tokens: list[str]) -> None:
        """Slots whose release Redis lost (a restart keeps them in flight, from its append-only file): the
        process's next booking, whichever thread makes it, releases them, not their lease's end (30 s or
        more, during which the concurrency cap counts them: a few such stall every worker)."""
        with self._orphans_lock:
            self._orphans += (token for token in tokens if token not in self._orphans)
        tokens.clear()

    def release(self, tokens: list[str]) -> None:
        self._release(tokens)

    def _release(self, tokens: list[str]) -> None:
        """Give these slots back now; when Redis fails, with the next booking (`orphaned`)."""
        if tokens:
            run = self._run.get()
            if run is not None and run.token in tokens:
                run.ended = True  # its lease is gone: its next calls book slots of their own
            try:
                self.redis.zrem(self._keys.limiter_in_flight, *tokens)
            except RedisError:
                self.orphaned(tokens)
                raise
            tokens.clear()

    def booking(self, further: int = 0) -> ScriptCall:
        """The first attempt to book the next call's slot, to send along with other scripts (one round
        trip: workers/scripts_at_once.py); hand its answer to `booked` before the call. Inside
        `released_later`, the slot, once booked, is held by the block whether or not a call uses it.
        `further`: book up to this many more slots due now, a run for this thread's next calls (each
        inside a `released_later` block of its own); `end_run` gives back what they did not use."""
        token, spacing = uuid.uuid4().hex, self._spacing()
        self._booking.set((token, time.monotonic(), self._pauses, spacing))
        args = self._acquire_args(token, 0.0, self.unreleased(), further, spacing=spacing)
        return ScriptCall(self._acquire, self._acquire_keys, args)

    def booked(self, booking: ScriptCall, answer: list[Any]) -> None:
        """The answer to `booking`: the next call of this delivery (thread) starts from it."""
        token = booking.args[3]
        self._booked.set((token, answer))
        held = self._held.get()
        if held is not None and answer[0]:
            held.append(token)  # released with the outcome, even if no call comes
        sent = self._booking.get()
        self._booking.set(None)
        if sent is not None and sent[0] == token:
            _, sent_at, pauses, spacing = sent  # counted from the booking's sending, and a 429 since ends it
            self._start_run(token, answer, sent_at, pauses, spacing)

    def _start_run(self, token: str, answer: list[Any], sent_at: float, pauses: int, spacing: float) -> None:
        """The run an ACQUIRE answer booked for this thread's next calls, if it booked any (`further`),
        its slots `spacing` apart from `sent_at` (when the script was sent), ended by any 429 after `pauses`."""
        if answer[0] and int(answer[3]) > 0:
            self._run.set(_Run(token, int(answer[3]), sent_at, spacing, pauses, list(answer[5:7])))

    def unanswered(self, booking: ScriptCall) -> None:
        """`booking` went to Redis but its answer was lost (the round trip failed)."""
        self._booking.set(None)
        self._answer_lost(booking.args)

    def _answer_lost(self, args: list[Any]) -> None:
        """An ACQUIRE with these arguments went to Redis, and its answer was lost. If it ran, its slot's
        lease holds a place under the in-flight cap until it expires; if not, neither were the leases
        it was to release (of calls done, no longer known to this thread). All released, now or (Redis
        failing still) with the process's next booking."""
        tokens = [args[3], *args[8].split()]  # the slot's token; the tokens to release, space-separated
        try:
            self._release(tokens)
        except RedisError as exc:
            log.warning(
                "%s: %d slots of a booking whose answer was lost go with the next booking: %s",
                self._keys.destination,
                len(tokens),
                exc,
            )

    def end_run(self) -> None:
        """Give back the slots of this thread's run that no call used (the calls are done). Only a
        saving: when Redis cannot be reached they stay booked, and the delivery goes on."""
        run = self._run.get()
        self._run.set(None)
        give_back = run.give_back() if run is not None else []
        if give_back:
            try:
                self._give_back(keys=[self._keys.limiter_tat, self._keys.limiter_window], args=give_back)
            except RedisError as exc:
                log.warning(
                    "%s: a run's %d unused slots were not given back: %s", self._keys.destination, give_back[0], exc
                )

    def _acquire_args(
        self,
        token: str,
        waited: float,
        release: list[str],
        further: int = 0,
        give_back: list[Any] | None = None,
        spacing: float = 0.0,
    ) -> list[Any]:
        ceiling = self.config.rate_per_second
        max_wait_ms = (self.max_sleep - waited) * 1000
        burst, reserve = self.config.burst, (0.0, 0)
        if self.below_live:  # its next slot only, no burst credit, and room left in each second
            max_wait_ms = 0.0  # a slot due now, or none: it sleeps until then without holding one
            burst, reserve, further = 1, (BELOW_LIVE_RESERVE_SHARE, BELOW_LIVE_RESERVE_MIN), 0
        return [
            *(ceiling, burst, self.config.max_in_flight, token, self.config.lease_ms, max_wait_ms),
            *(JITTER_MS, increase_per_second(ceiling), " ".join(release), *reserve, further),
            *(give_back or [0, "", 0, 0, 0]),
            round(spacing * 1000, 3),
        ]

    def _book(
        self,
        token: str,
        first: list[Any] | None = None,
        give_back: list[Any] | None = None,
        renew: tuple[int, int] | None = None,
    ) -> None:
        """Book a slot and sleep until it; a short wait to ask again (the cap, a pause) is slept too.
        `first`: the answer to a first attempt already made (`booking`); `give_back`: a run's unused
        slots, given back with the first attempt; `renew`: (how many, the 429 count it was decided
        under) of a stale run's slots to book again with the first attempt, due now, as a new run
        under this call's lease (a round trip for the rest of the run, not one a call). A 429 this
        process saw since the decision ends the new run at once."""
        further, pauses = renew or (0, 0)
        spacing = self._spacing() if further else 0.0
        waited = 0.0
        while True:
            if first is not None:
                answer, first = first, None
            else:
                args = self._acquire_args(token, waited, self.unreleased(), further, give_back, spacing)
                sent_at = time.monotonic()
                try:
                    answer, give_back = self._acquire(keys=self._acquire_keys, args=args), None
                except RedisError:
                    self._answer_lost(args)
                    raise
                if further:
                    self._start_run(token, answer, sent_at, pauses, spacing)
            booked, micros, rate_milli = answer[:3]
            self._saw_rate(int(rate_milli) / 1000)
            wait = int(micros) / 1e6
            if not booked and waited + wait > self.max_sleep:
                raise Throttled(wait)
            if wait > 0:
                time.sleep(wait)
                waited += wait
            if booked and (wait == 0 or not self._paused(keys=[self._keys.limiter_paused_until])):
                return
            if booked:  # a 429 paused every worker while this one slept: its slot is given up
                self._release([token])

    def shorten_pause(self) -> bool:
        """End a pause set longer than a 429 may ask for now (config.max_pause_seconds) at that length: one
        set before the cap, or under a larger cap. A worker calls this as it starts; True if it did."""
        max_pause_ms = int(self.config.max_pause_seconds * 1000)
        shortened = self._shorten_pause(keys=[self._keys.limiter_paused_until], args=[max_pause_ms])
        if shortened:
            log.warning(
                "%s was paused for longer than RELAY_RETRY_MAX_DELAY_SECONDS (%.0f s): the pause ends then",
                self._keys.destination,
                self.config.max_pause_seconds,
                extra={"destination": self._keys.destination},
            )
        return bool(shortened)

    def pause(self, seconds: float | None) -> float:
        """A 429: every worker waits until then (Retry-After exactly, else DEFAULT_PAUSE_SECONDS), and
        the effective rate is lowered once per episode. Returns the pause's end (epoch seconds)."""
        wanted = seconds if seconds is not None else DEFAULT_PAUSE_SECONDS
        if wanted > self.config.max_pause_seconds:
            log.warning(
                "%s asked for a %.0f s pause (Retry-After): pausing %.0f s (RELAY_RETRY_MAX_DELAY_SECONDS)",
                self._keys.destination,
                wanted,
                self.config.max_pause_seconds,
                extra={"destination": self._keys.destination},
            )
            wanted = self.config.max_pause_seconds
        pause_ms = int(1000 * wanted)
        pause_keys = [
            self._keys.limiter_paused_until,
            self._keys.last_429,
            self._keys.limiter_rate,
            self._keys.limiter_window,
        ]
        self._pauses += 1  # this process's runs end: their next calls book (and find the pause)
        ceiling = self.config.rate_per_second
        args = [pause_ms, ceiling, increase_per_second(ceiling), DECREASE_FACTOR, ceiling * FLOOR_FRACTION]
        until_ms, lowered, old_milli, new_milli = self._pause(keys=pause_keys, args=args)
        self._pauses += 1  # and a run booked while the pause was being set, before Redis held it
        if lowered:
            old, new = int(old_milli) / 1000, int(new_milli) / 1000
            log.warning(
                "%s rate lowered from %.2f/s to %.2f/s after a 429 (ceiling %g/s)",
                self._keys.destination,
                old,
                new,
                ceiling,
                extra={"destination": self._keys.destination, "effective_rate": new},
            )
            self.effective_rate = self._logged_rate = new
        return int(until_ms) / 1000

    def _saw_rate(self, rate: float) -> None:
        """Log the effective rate when it has grown back by a step (5 % of the ceiling) or to the ceiling."""
        self.effective_rate = rate
        ceiling = self.config.rate_per_second
        step = 0.05 * ceiling
        if rate < self._logged_rate:  # lowered by another process, which logged it
            self._logged_rate = rate
            return
        back_at_ceiling = rate == ceiling > self._logged_rate
        if rate - self._logged_rate < step and not back_at_ceiling:
            return
        self._logged_rate = rate
        log.info(
            "%s rate back up to %.2f/s (ceiling %g/s)",
            self._keys.destination,
            rate,
            ceiling,
            extra={"destination": self._keys.destination, "effective_rate": rate},
        )
