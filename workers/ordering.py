"""Per-user ordering: one delivery per user at a time, and last-writer-wins by event time.

Stripe does not order deliveries and retries reorder them, so an older event can reach the
worker after a newer one. Before sending, a job claims its user (a short lease) and, per
attribute, the right to write: only attributes whose last sent value is not newer than this
event are sent, and their event time is recorded in the same atomic step. The lease keeps
two jobs for the same user from racing each other to User.com.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from redis import Redis

from service import keys
from service.updates import UserUpdate

LEASE_MS = 60_000  # longer than one job's User.com calls with their timeouts
WAIT_FOR_LEASE_SECONDS = 2.0  # then the job is retried later instead of holding the worker
POLL_SECONDS = 0.01

# KEYS: lock, last_written. ARGV: token, lease_ms, event_time, lww_ttl, attribute names...
# Returns nil when another job holds the user, else the attributes this event may write.
CLAIM_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return false end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local event_time = tonumber(ARGV[3])
local fresh = {}
for i = 5, #ARGV do
    local last = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '-1')
    if last <= event_time then
        redis.call('HSET', KEYS[2], ARGV[i], ARGV[3])
        table.insert(fresh, ARGV[i])
    end
end
if #ARGV >= 5 then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
return fresh
"""

# KEYS: lock. ARGV: token. Releases only our own lease.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class UserBusy(Exception):
    """Another job is delivering to this user; try again shortly."""


@dataclass(frozen=True)
class Claim:
    standard: dict[str, object]
    custom: dict[str, object]

    @property
    def empty(self) -> bool:
        return not (self.standard or self.custom)


class Ordering:
    def __init__(self, redis: Redis, *, lww_ttl_seconds: int) -> None:
        self.redis = redis
        self.lww_ttl = lww_ttl_seconds
        self._claim = redis.register_script(CLAIM_SCRIPT)
        self._release = redis.register_script(RELEASE_SCRIPT)

    @contextmanager
    def claim(self, user_id: str, update: UserUpdate) -> Iterator[Claim]:
        """Hold the user's lease while the block sends what this event may still write."""
        lock = keys.user_lock(update.source, user_id)
        token = uuid.uuid4().hex
        names = [*update.standard, *update.custom]
        args = [token, LEASE_MS, update.event_time, self.lww_ttl, *names]
        script_keys = [lock, keys.last_written(update.source, user_id)]
        deadline = time.monotonic() + WAIT_FOR_LEASE_SECONDS
        while (fresh := self._claim(keys=script_keys, args=args)) is None:
            if time.monotonic() > deadline:
                raise UserBusy(f"user {user_id} is being updated by another job")
            time.sleep(POLL_SECONDS)
        allowed = {name.decode() for name in fresh}
        try:
            yield Claim(
                {k: v for k, v in update.standard.items() if k in allowed},
                {k: v for k, v in update.custom.items() if k in allowed},
            )
        finally:
            self._release(keys=[lock], args=[token])
