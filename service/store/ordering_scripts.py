"""The Lua of per-user ordering (workers/ordering.py): a user's lease, parked updates and
last-writer-wins claims, each headed by its KEYS and ARGV read into named locals."""

from __future__ import annotations

# Last-writer-wins: of the (attribute, event time) pairs in ARGV from index `first_pair` on, the
# attributes not older than the value last written, whose times are recorded now.
CLAIM_LUA = """
local function claim(last_written, lww_ttl, first_pair)
    local fresh = {}
    for i = first_pair, #ARGV, 2 do
        local attribute, event_time = ARGV[i], ARGV[i + 1]
        local last = tonumber(redis.call('HGET', last_written, attribute) or '-1')
        if last <= tonumber(event_time) then
            redis.call('HSET', last_written, attribute, event_time)
            table.insert(fresh, attribute)
        end
    end
    if #ARGV >= first_pair then redis.call('EXPIRE', last_written, lww_ttl) end
    return fresh
end
"""

# Claim, with the user's lease, the attributes that may be written.
# KEYS: lock, last_written
# ARGV: token, lease_ms, lww_ttl, then pairs: attribute, event_time
# Returns: nil (another job holds the user) | {attribute, ...} (those that may be written)
CLAIM_SCRIPT = (
    CLAIM_LUA
    + """
local FIRST_PAIR = 4
local lock = KEYS[1]
local last_written = KEYS[2]
local token = ARGV[1]
local lease_ms = ARGV[2]
local lww_ttl = ARGV[3]

local holder = redis.call('GET', lock)
if holder and holder ~= token then return false end
redis.call('SET', lock, token, 'PX', lease_ms)
return claim(last_written, lww_ttl, FIRST_PAIR)
"""
)

# Release our own lease, never another job's.
# KEYS: lock
# ARGV: token
# Returns: 1 (released) | 0 (not ours, or gone)
RELEASE_SCRIPT = """
local lock = KEYS[1]
local token = ARGV[1]

if redis.call('GET', lock) == token then return redis.call('DEL', lock) end
return 0
"""

# Park the updates whose outcome is not counted yet.
# KEYS: parked, then per update: outcome_key
# ARGV: per update: event_id, update_json
# Returns: parked (how many were parked)
PARK_SCRIPT = """
local parked = KEYS[1]

local count = 0
for u = 1, #KEYS - 1 do  -- update u: KEYS[1 + u]; ARGV[2u - 1], ARGV[2u]
    local outcome_key = KEYS[1 + u]
    local event_id, update_json = ARGV[2 * u - 1], ARGV[2 * u]
    if redis.call('EXISTS', outcome_key) == 0 then
        redis.call('HSET', parked, event_id, update_json)
        count = count + 1
    end
end
return count
"""

# Park the update, take the user's lease and every update parked for the user, leaving out those
# whose outcome is counted meanwhile: without a backlog, one round trip.
# KEYS: parked, lock, outcome_key (the update's), last_written, memory_key (the destination's memory of the user)
# ARGV: token, lease_ms, event_id, update_json, outcome_prefix ("relay:outcome:<source>:"), lww_ttl,
#       read_memory ('1' to read the memory), then the update's pairs: attribute, event_time
# Returns: 0 (the update's own outcome is counted already)
#        | nil (another job holds the user; the update stays parked for it)
#        | {others (the JSON of each other update taken),
#           claimed (the attributes claimed, as CLAIM_SCRIPT, when there were no others; else nil),
#           memory (or nil)}
BEGIN_SCRIPT = (
    CLAIM_LUA
    + """
local FIRST_PAIR = 8
local parked = KEYS[1]
local lock = KEYS[2]
local outcome_key = KEYS[3]
local last_written = KEYS[4]
local memory_key = KEYS[5]
local token = ARGV[1]
local lease_ms = ARGV[2]
local event_id = ARGV[3]
local update_json = ARGV[4]
local outcome_prefix = ARGV[5]
local lww_ttl = ARGV[6]
local read_memory = ARGV[7]

if redis.call('EXISTS', outcome_key) == 1 then
    redis.call('HDEL', parked, event_id)
    return 0
end
redis.call('HSET', parked, event_id, update_json)
local holder = redis.call('GET', lock)
if holder and holder ~= token then return false end
redis.call('SET', lock, token, 'PX', lease_ms)
local all = redis.call('HGETALL', parked)
redis.call('DEL', parked)
local others = {}
for i = 1, #all, 2 do
    local other_id, other_json = all[i], all[i + 1]
    if other_id ~= event_id and redis.call('EXISTS', outcome_prefix .. other_id) == 0 then
        table.insert(others, other_json)
    end
end
local memory = read_memory == '1' and redis.call('GET', memory_key)
if #others == 0 then return {others, claim(last_written, lww_ttl, FIRST_PAIR), memory} end
return {others, false, memory}
"""
)
