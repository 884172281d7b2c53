"""The rate limiter's Lua scripts (workers/ratelimit.py), all on Redis' clock.

The limiter keeps two promises to the destination, cluster-wide:
- GCRA: slots `1 / rate` apart on average (with `burst` at once). A lane below live (backfill)
  spaces its own calls and follows live ones, but a live call never waits behind its spacing:
  right after a backfill call one live call may go at once. The window below still holds, and
  the backfill leaves room in it for live calls (workers/ratelimit.py);
- a sliding window: no `n = floor(rate)` slots closer together than one second plus
  `jitter_ms`, so that however the few milliseconds between a slot and the request's arrival
  vary, no one-second window at the receiver sees more than `n` calls (below 1/s: no two slots
  closer than `1 / rate` plus `jitter_ms`, whichever lane booked them).

`rate` is the effective rate (AIMD), never above the configured ceiling: each 429 lowers it
(multiplicatively, from the lower of the effective rate and the rate actually sent in the last
second, at most halving it), once per congestion episode; it then grows back by
`increase_per_s` every second, lazily, from the state {base, at} kept in one hash:
effective(now) = min(ceiling, base + increase_per_s * (now - at) / 1000).
Each script is headed by its KEYS and ARGV, read into named locals before any logic, and has
one wrapper in workers/ratelimit.py.
"""

from __future__ import annotations

# effective(now) of the hash `rate_key` (no hash: the ceiling).
_EFFECTIVE_LUA = """
local function effective(rate_key, now, ceiling, increase_per_s)
    local state = redis.call('HMGET', rate_key, 'base', 'at')
    if not state[1] then return ceiling end
    local grown = tonumber(state[1]) + increase_per_s * math.max(0, now - tonumber(state[2])) / 1000
    return math.min(ceiling, grown)
end
local function redis_now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
"""

# Give back the last `count` of the `booked` slots of a run (ACQUIRE's `further`, booked with `token`)
# that no call used: their window entries (`<token>:<n>`) go, and the schedule moves back by their
# intervals, but only by what of the run's claim is still ahead (`run_end`: the arrival time right
# after the run): a run given back late gives no credit time has already spent.
_GIVE_BACK_LUA = """
local function give_back(tat_key, window_key, count, token, booked, run_end, interval, now)
    local tat = tonumber(redis.call('GET', tat_key) or '0')
    local credit = math.min(count * interval, math.max(0, run_end - now))
    if credit > 0 and tat > now then redis.call('SET', tat_key, math.max(now, tat - credit), 'KEEPTTL') end
    for n = booked - count + 1, booked do redis.call('ZREM', window_key, token .. ':' .. n) end
end
"""

# Book the next slot for a call.
# KEYS: tat (GCRA theoretical arrival time of live calls, ms), pause_until (ms), in_flight (zset token
#       -> lease end ms), window (zset of booked slots -> their time, ms), rate (hash base/at/hold_until),
#       own_tat (the arrival time this caller advances: tat itself for live calls; a lane below live
#       keeps its own, so that its spacing never delays a live call, and respects both)
# ARGV: ceiling (calls/s), burst, max_in_flight, token, lease_ms, max_wait_ms, jitter_ms,
#       increase_per_s, release (tokens of calls done, space-separated, released first: a round trip less),
#       reserve_share, reserve_min (of each one-second window's floor(rate) slots, the share, at
#       least reserve_min, this caller leaves to others: a lane below live; 0, 0 for live calls),
#       further (when the slot is due now, up to this many more slots due now are booked with it, a
#       run for the same caller's next calls, one after another: they share the token's lease, as the
#       caller has one call in flight at a time; 0 for one slot. A run takes no more than half the
#       burst and half the window, so other callers still find slots at once),
#       give_back_count, give_back_token, give_back_booked, give_back_run_end, give_back_interval (a
#       run's unused slots, given back first: _GIVE_BACK_LUA; 0, '', 0, 0, 0 for none),
#       spacing (ms: the run's n-th slot is entered in the window at now + n x spacing, the caller's
#       pace, and its call may come any time until then plus the jitter; 0: all now)
# (The window keeps at most 5,000 slots: above 5,000 calls/s only GCRA spaces them.)
# A slot is checked against the window at the earliest its call may arrive (its time; now for a
# run's) and entered at the latest but the jitter (its time; now + n x spacing for a run's), so any
# later booking counts it at least as new as it is: with every entry newer than a second ago (plus
# the jitter) counted, future ones too, no second at the receiver holds more than floor(rate).
# Returns {1, microseconds until the slot, effective rate x 1000, further slots booked, and as text:
# their time, the arrival time right after them, the interval (ms)} when a slot is booked for the
# token (now, or at most max_wait_ms ahead: the schedule moves on at once, so waiters never compete
# for the same slot), else {0, microseconds to wait before asking again, rate x 1000} (paused, at
# the concurrency cap, or the next slot is further ahead than max_wait_ms).
ACQUIRE_SCRIPT = (
    _EFFECTIVE_LUA
    + _GIVE_BACK_LUA
    + """
redis.replicate_commands()
local tat_key = KEYS[1]
local pause_key = KEYS[2]
local in_flight_key = KEYS[3]
local window_key = KEYS[4]
local rate_key = KEYS[5]
local own_tat_key = KEYS[6]
local ceiling = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_in_flight = tonumber(ARGV[3])
local token = ARGV[4]
local lease_ms = tonumber(ARGV[5])
local max_wait_ms = tonumber(ARGV[6])
local jitter_ms = tonumber(ARGV[7])
local increase_per_s = tonumber(ARGV[8])
local release = ARGV[9]
local reserve_share = tonumber(ARGV[10])
local reserve_min = tonumber(ARGV[11])
local further = tonumber(ARGV[12] or '0')
local give_back_count = tonumber(ARGV[13] or '0')
local give_back_token = ARGV[14] or ''
local give_back_booked = tonumber(ARGV[15] or '0')
local give_back_run_end = tonumber(ARGV[16] or '0')
local give_back_interval = tonumber(ARGV[17] or '0')
local spacing = tonumber(ARGV[18] or '0')

for done in string.gmatch(release, '%S+') do redis.call('ZREM', in_flight_key, done) end
local now = redis_now_ms()
if give_back_count > 0 then
    give_back(tat_key, window_key, give_back_count, give_back_token, give_back_booked, give_back_run_end,
              give_back_interval, now)
end
local rate = effective(rate_key, now, ceiling, increase_per_s)
local rate_milli = math.floor(rate * 1000)
local pause = tonumber(redis.call('GET', pause_key) or '0')
if pause > now then return {0, math.ceil((pause - now) * 1000), rate_milli} end
redis.call('ZREMRANGEBYSCORE', in_flight_key, '-inf', now)
if redis.call('ZCARD', in_flight_key) >= max_in_flight then
    local first = redis.call('ZRANGE', in_flight_key, 0, 0, 'WITHSCORES')
    return {0, math.ceil(math.max(1, math.min(50, tonumber(first[2]) - now)) * 1000), rate_milli}
end
local interval = 1000 / rate
local tat = math.max(tonumber(redis.call('GET', tat_key) or '0'), now)
if own_tat_key ~= tat_key then tat = math.max(tat, tonumber(redis.call('GET', own_tat_key) or '0')) end
-- The earliest slot after arrival time `at` with `credit` slots of burst, when the window may already
-- hold `in_window` slots: GCRA's, and no sooner than a second (plus jitter) after the in_window-th
-- newest (below 1/s the window is one interval wide: one slot per 1 / rate across both lanes).
local function earliest(at, credit, in_window)
    local earliest_slot = math.max(at - (credit - 1) * interval, now)
    local nth = redis.call('ZREVRANGE', window_key, in_window - 1, in_window - 1, 'WITHSCORES')[2]
    if nth then earliest_slot = math.max(earliest_slot, tonumber(nth) + math.max(1000, interval) + jitter_ms) end
    return earliest_slot
end
local per_window = math.max(1, math.floor(rate))
local reserve = math.max(reserve_min, math.floor(reserve_share * per_window))
local slot = earliest(tat, burst, math.max(1, per_window - reserve))
local wait = slot - now
if wait > max_wait_ms then return {0, math.ceil(wait * 1000), rate_milli} end
local next_tat = math.max(tat, slot) + interval
redis.call('ZADD', window_key, slot, token)
local booked = 0
-- further slots: each as the first would be, while one is due now (wait 0: slot is now), with
-- half the burst and half the window left to other callers; the n-th entered at now + n x spacing
local run_burst = burst - math.floor(burst / 2)
local run_window = math.max(1, per_window - math.max(reserve, math.floor(per_window / 2)))
while wait == 0 and booked < further do
    if earliest(next_tat, run_burst, run_window) > now then break end
    booked = booked + 1
    redis.call('ZADD', window_key, now + booked * spacing, token .. ':' .. booked)
    next_tat = next_tat + interval
end
redis.call('SET', own_tat_key, next_tat, 'PX', math.ceil(next_tat - now + 1000))
redis.call('ZREMRANGEBYRANK', window_key, 0, -math.min(5000, math.max(1, math.floor(ceiling))) - 1)
local newest = tonumber(redis.call('ZREVRANGE', window_key, 0, 0, 'WITHSCORES')[2])
redis.call('PEXPIRE', window_key, math.ceil(newest - now + 1000 + jitter_ms + 1000))
redis.call('ZADD', in_flight_key, slot + lease_ms, token)
return {1, math.ceil(wait * 1000), rate_milli, booked, string.format('%.17g', now),
        string.format('%.17g', next_tat), string.format('%.17g', interval)}
"""
)

# Give back a run's slots no call used (_GIVE_BACK_LUA).
# KEYS: tat (of live calls), window
# ARGV: count, the run's token, how many it booked, the arrival time right after the run, the
#       interval (ms; the last two as ACQUIRE returned them)
GIVE_BACK_SCRIPT = (
    _EFFECTIVE_LUA  # for redis_now_ms
    + _GIVE_BACK_LUA
    + """
redis.replicate_commands()
local tat_key = KEYS[1]
local window_key = KEYS[2]
local count = tonumber(ARGV[1])
local token = ARGV[2]
local booked = tonumber(ARGV[3])
local run_end = tonumber(ARGV[4])
local interval = tonumber(ARGV[5])

give_back(tat_key, window_key, count, token, booked, run_end, interval, redis_now_ms())
"""
)

# Whether a 429 has paused every worker.
# KEYS: pause_until (ms)
# Returns 1 when paused, else 0.
PAUSED_SCRIPT = """
local pause_key = KEYS[1]
local t = redis.call('TIME')
return tonumber(redis.call('GET', pause_key) or '0') > tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000 and 1 or 0
"""

# A pause ending later than the longest one a 429 may ask for now (the worker's RELAY_RETRY_MAX_DELAY_SECONDS),
# set by a release without the cap (one Retry-After asked for days) or under a larger one, ends then
# instead: each worker runs this as it starts.
# KEYS: pause_until (ms)
# ARGV: max_pause_ms
# Returns 1 when the pause was shortened, else 0.
SHORTEN_PAUSE_SCRIPT = """
local pause_key = KEYS[1]
local max_pause_ms = tonumber(ARGV[1])
local t = redis.call('TIME')
local latest = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + max_pause_ms
if tonumber(redis.call('GET', pause_key) or '0') <= latest then return 0 end
redis.call('SET', pause_key, latest, 'PX', max_pause_ms + 1000)
return 1
"""

# A 429: pause every worker (extends, never shortens, the pause) and, once per congestion episode
# (429s before hold_until belong to the episode already answered), lower the effective rate.
# KEYS: pause_until (ms), last_429 (epoch seconds), rate (hash base/at/hold_until), window
# ARGV: pause_ms, ceiling, increase_per_s, decrease (factor, e.g. 0.9), floor_rate (calls/s)
# Returns {pause end ms, 1 if the rate was lowered now else 0, old rate x 1000, new rate x 1000}
PAUSE_SCRIPT = (
    _EFFECTIVE_LUA
    + """
redis.replicate_commands()
local pause_key = KEYS[1]
local last_429_key = KEYS[2]
local rate_key = KEYS[3]
local window_key = KEYS[4]
local pause_ms = tonumber(ARGV[1])
local ceiling = tonumber(ARGV[2])
local increase_per_s = tonumber(ARGV[3])
local decrease = tonumber(ARGV[4])
local floor_rate = tonumber(ARGV[5])

local exact_now = redis_now_ms()
local now = math.floor(exact_now)
local until_ms = now + pause_ms
local current_pause = tonumber(redis.call('GET', pause_key) or '0')
if until_ms > current_pause then redis.call('SET', pause_key, until_ms, 'PX', pause_ms + 1000) end
redis.call('SET', last_429_key, now / 1000)
local old = effective(rate_key, now, ceiling, increase_per_s)
local hold_until = tonumber(redis.call('HGET', rate_key, 'hold_until') or '0')
if now < hold_until then
    return {math.max(until_ms, current_pause), 0, math.floor(old * 1000), math.floor(old * 1000)}
end
local sent = redis.call('ZCOUNT', window_key, '(' .. (exact_now - 1000), exact_now)
local new = math.max(floor_rate, old / 2, decrease * math.min(old, math.max(sent, 1)))
new = math.min(new, old)
redis.call('HSET', rate_key, 'base', new, 'at', now, 'hold_until', math.max(until_ms, now + 1000))
return {math.max(until_ms, current_pause), 1, math.floor(old * 1000), math.floor(new * 1000)}
"""
)


def effective_rate(base: float | None, at_ms: float | None, now_ms: float, ceiling: float, increase: float) -> float:
    """The same as the scripts' effective(): for readers of the state (status, metrics)."""
    if base is None or at_ms is None:
        return ceiling
    return min(ceiling, base + increase * max(0.0, now_ms - at_ms) / 1000)


# AIMD and window parameters (shared by the limiter and the readers of its state).
INCREASE_FRACTION_PER_SECOND = 0.0025  # of the ceiling: from 0.9 R back to R in 40 s at ceiling R
DECREASE_FACTOR = 0.9
FLOOR_FRACTION = 0.02  # the effective rate never goes below 2 % of the ceiling
JITTER_MS = 40  # slot-to-arrival variation absorbed by the sliding window


def increase_per_second(ceiling: float) -> float:
    return ceiling * INCREASE_FRACTION_PER_SECOND
