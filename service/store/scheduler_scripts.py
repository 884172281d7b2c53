"""The Lua that frees an rq scheduler lock whose holder died (workers/runner.py).

rq's scheduler takes `rq:scheduler-lock:<queue>` for SCHEDULER_LOCK_TTL_SECONDS (its interval, 1 s,
plus 60) and refreshes it every interval. A scheduler killed before it could release its lock (its
worker SIGKILLed while the scheduler was starting, say) left the queue's retries and put-back jobs
unscheduled until the lock lapsed: up to a minute with nothing enqueued (seen in bench/chaos).
"""

from __future__ import annotations

SCHEDULER_LOCK_TTL_SECONDS = 61  # rq: interval + 60
# A lock not refreshed for this long has lost its holder (a live one refreshes it every second).
SCHEDULER_STALE_SECONDS = 6

# Free a scheduler lock its holder stopped refreshing: one whose time to live fell to `stale_at` or less.
# KEYS: lock
# ARGV: stale_at (seconds of time to live left)
# Returns: 1 (freed) | 0 (no lock, or one still refreshed)
FREE_STALE_LOCK_SCRIPT = """
local lock = KEYS[1]
local stale_at = tonumber(ARGV[1])

local ttl = redis.call('TTL', lock)
if ttl >= 0 and ttl <= stale_at then
    redis.call('DEL', lock)
    return 1
end
return 0
"""
