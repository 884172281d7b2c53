"""One rate limiter for every worker process of every pod: GCRA in Redis, on Redis' clock.

Each User.com call first takes a slot: the script checks the cluster-wide pause a 429 set,
the concurrency cap (`USERCOM_MAX_IN_FLIGHT` calls at once, leases that expire if a worker
dies) and the GCRA schedule (`USERCOM_RATE_LIMIT` per second, `USERCOM_BURST` at once), and
either books the next slot for the caller (now, or up to a second ahead: the caller sleeps until
it, and re-checks the pause if it slept) or says how long to wait. A short wait is slept; a long
one is handed back to the job, which is put back to run at that time instead of holding its worker.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from redis import Redis

from service.store import keys

# KEYS: tat (GCRA theoretical arrival time, ms), pause_until (ms), in_flight (zset token -> lease end ms)
# ARGV: interval_ms, burst_tolerance_ms, max_in_flight, token, lease_ms, max_wait_ms
# Returns {1, microseconds until the slot} when a slot is booked for the token (now, or at most
# max_wait_ms ahead: the schedule moves on at once, so waiters never compete for the same slot and
# none is lost to a late wake-up), else {0, microseconds to wait before asking again} (paused, at
# the concurrency cap, or the next slot is further ahead than max_wait_ms).
ACQUIRE_SCRIPT = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local pause = tonumber(redis.call('GET', KEYS[2]) or '0')
if pause > now then return {0, math.ceil((pause - now) * 1000)} end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[3]) then
    local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    return {0, math.ceil(math.max(1, math.min(50, tonumber(first[2]) - now)) * 1000)}
end
local interval = tonumber(ARGV[1])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local wait = math.max(0, tat - tonumber(ARGV[2]) - now)
if wait > tonumber(ARGV[6]) then return {0, math.ceil(wait * 1000)} end
redis.call('SET', KEYS[1], tat + interval, 'PX', math.ceil(tat + interval - now + 1000))
redis.call('ZADD', KEYS[3], now + wait + tonumber(ARGV[5]), ARGV[4])
return {1, math.ceil(wait * 1000)}
"""

# KEYS: pause_until. Whether a 429 has paused every worker (on Redis' clock).
PAUSED_SCRIPT = """
local t = redis.call('TIME')
return tonumber(redis.call('GET', KEYS[1]) or '0') > tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000 and 1 or 0
"""

# KEYS: pause_until, last_429. ARGV: pause_ms. Extends, never shortens, the cluster-wide pause.
PAUSE_SCRIPT = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ms > current then redis.call('SET', KEYS[1], until_ms, 'PX', tonumber(ARGV[1]) + 1000) end
redis.call('SET', KEYS[2], now / 1000)
return math.max(until_ms, current)
"""

DEFAULT_PAUSE_SECONDS = 5.0  # a 429 without Retry-After
MAX_SLEEP_SECONDS = 1.0  # longer waits go back to the queue
LEASE_MS = 30_000  # a call's concurrency lease; expires if its worker dies


class Throttled(Exception):
    """No slot soon enough: run this job again after `wait` seconds."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"rate limited: next slot in {wait:.2f}s")
        self.wait = wait


@dataclass(frozen=True)
class LimitConfig:
    rate_per_second: float
    burst: int
    max_in_flight: int


class RateLimiter:
    def __init__(
        self,
        redis: Redis,
        config: LimitConfig,
        *,
        sleep: float = MAX_SLEEP_SECONDS,
        destination_keys: keys.Keys,
    ) -> None:
        self.redis = redis
        self.config = config
        self.max_sleep = sleep
        self._acquire = redis.register_script(ACQUIRE_SCRIPT)
        self._pause = redis.register_script(PAUSE_SCRIPT)
        self._paused = redis.register_script(PAUSED_SCRIPT)
        self._held: ContextVar[list[str] | None] = ContextVar(f"held_slots_{id(self)}", default=None)
        self._keys = destination_keys
        self._acquire_keys = [
            destination_keys.limiter_tat,
            destination_keys.limiter_paused_until,
            destination_keys.limiter_in_flight,
        ]

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one call's slot; raises Throttled when the wait would exceed max_sleep. Inside
        `released_later`, a call that returns keeps its slot for the caller to release."""
        held = self._held.get()
        if held:  # an earlier call of the same delivery: one slot per delivery at a time
            self._release(held)
        token = uuid.uuid4().hex
        self._book(token)
        try:
            yield
        except BaseException:
            self._release([token])
            raise
        if held is None:
            self._release([token])
        else:
            held.append(token)

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
            self._release(held)

    def _release(self, tokens: list[str]) -> None:
        if tokens:
            self.redis.zrem(self._keys.limiter_in_flight, *tokens)
            tokens.clear()

    def _book(self, token: str) -> None:
        """Book a slot and sleep until it; a short wait to ask again (the cap, a pause) is slept too."""
        interval_ms = 1000.0 / self.config.rate_per_second
        args = [interval_ms, (self.config.burst - 1) * interval_ms, self.config.max_in_flight, token, LEASE_MS]
        waited = 0.0
        while True:
            booked, micros = self._acquire(keys=self._acquire_keys, args=[*args, (self.max_sleep - waited) * 1000])
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

    def pause(self, seconds: float | None) -> float:
        """A 429: every worker waits until then. Returns the pause's end (epoch seconds)."""
        pause_ms = int(1000 * (seconds if seconds is not None else DEFAULT_PAUSE_SECONDS))
        pause_keys = [self._keys.limiter_paused_until, self._keys.last_429]
        return int(self._pause(keys=pause_keys, args=[pause_ms])) / 1000
