"""The Lua of per-user ordering (workers/ordering.py): a user's lease, parked updates and
last-writer-wins claims, each headed by its KEYS and ARGV read into named locals."""

from __future__ import annotations

from service.store.ledger_state import MERGE_LUA, ORDER_LUA

# Last-writer-wins: of the (attribute, "<event time>|<event id>") pairs in ARGV from index `first_pair` on,
# the attributes at least as new as the value last written, in the merge's order (ORDER_LUA: a tie in
# time to the greater event id; the same event again, a retry, passes), whose keys are recorded now.
# Per attribute the hash keeps the bare "<time>" under the attribute's own name, as releases before ids
# were kept read and write it (so workers of both releases can run side by side during an upgrade), and
# "<time>|<event id>" under "#<attribute>", which counts only while its time is still the bare one (a
# worker of the earlier release may have written a newer time since): else the bare time, lowest id.
# The hashes of the user's other sources count too (`others`, those that exist): an attribute ends with
# its newest value whichever source sent it; each source records in its own hash (as releases before
# did: they read their own).
CLAIM_LUA = (
    ORDER_LUA
    + """
local function last_key(last_written, attribute)
    local time = redis.call('HGET', last_written, attribute)
    if not time then return nil end
    local pair = redis.call('HGET', last_written, '#' .. attribute)
    if pair and string.match(pair, '^([^|]*)|') == time then return pair end
    return time
end
local function claim(last_written, lww_ttl, first_pair, others)
    local hashes = {last_written}
    for _, other in ipairs(others) do
        if redis.call('EXISTS', other) == 1 then table.insert(hashes, other) end
    end
    local fresh = {}
    for i = first_pair, #ARGV, 2 do
        local attribute, key = ARGV[i], ARGV[i + 1]
        local last = nil
        for _, hash in ipairs(hashes) do
            local recorded = last_key(hash, attribute)
            if recorded and (not last or at_least_as_new(recorded, last)) then last = recorded end
        end
        if not last or at_least_as_new(key, last) then
            redis.call('HSET', last_written, attribute, string.match(key, '^([^|]*)|'), '#' .. attribute, key)
            table.insert(fresh, attribute)
        end
    end
    if #ARGV >= first_pair then redis.call('EXPIRE', last_written, lww_ttl) end
    return fresh
end
"""
)

# Claim, with the user's lease, the attributes that may be written.
# KEYS: lock, last_written (this source's), then the last_written of the user's other sources
# ARGV: token, lease_ms, lww_ttl, then pairs: attribute, "<event time>|<event id>"
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

local others = {}
for k = 3, #KEYS do table.insert(others, KEYS[k]) end

local holder = redis.call('GET', lock)
if holder and holder ~= token then return false end
redis.call('SET', lock, token, 'PX', lease_ms)
return claim(last_written, lww_ttl, FIRST_PAIR, others)
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

# Park an update from a per-event job queued before the upgrade (its payload is the whole update) in
# its user's pending state, unless its outcome was counted already (outcome key) or it is there.
# KEYS: state, in_hand, outcome_key
# ARGV: event_field, event_value, then the update's state fields: field, value
# Returns: 1 (parked) | 0 (counted already, or pending already)
PARK_SCRIPT = (
    MERGE_LUA
    + """
local FIRST_FIELD = 3
local state = KEYS[1]
local in_hand = KEYS[2]
local outcome_key = KEYS[3]
local event_field = ARGV[1]
local event_value = ARGV[2]

if redis.call('EXISTS', outcome_key) == 1 then return 0 end
if pending_already(state, in_hand, event_field) then
    return 0
end
for i = FIRST_FIELD, #ARGV, 2 do merge_field(state, ARGV[i], ARGV[i + 1]) end
redis.call('HSET', state, event_field, event_value)
return 1
"""
)

# Take the user's lease and everything pending for the user: the state is merged into what a previous
# run left in hand (its worker died, or its delivery is to be retried), or becomes the in-hand state.
# From then on intake queues a new job for whatever arrives.
# KEYS: state, in_hand, lock, memory_key (the destination's memory of the user)
# ARGV: token, lease_ms, read_memory ('1' to read the memory)
# Returns: nil (another job holds the user) | {in-hand fields (HGETALL), memory (or nil)}
TAKE_SCRIPT = (
    MERGE_LUA
    + """
local state = KEYS[1]
local in_hand = KEYS[2]
local lock = KEYS[3]
local memory_key = KEYS[4]
local token = ARGV[1]
local lease_ms = ARGV[2]
local read_memory = ARGV[3]

local holder = redis.call('GET', lock)
if holder and holder ~= token then return false end
redis.call('SET', lock, token, 'PX', lease_ms)
if redis.call('EXISTS', state) == 1 then
    if redis.call('EXISTS', in_hand) == 1 then
        merge_hash(in_hand, state)
        redis.call('DEL', state)
    else
        redis.call('RENAME', state, in_hand)
    end
end
local memory = read_memory == '1' and redis.call('GET', memory_key)
return {redis.call('HGETALL', in_hand), memory}
"""
)

# Extend the leases a worker process holds while their deliveries run (never another job's).
# KEYS: lock, ... (one per lease held)
# ARGV: lease_ms, then one token per lock, in the order of KEYS
# Returns: {1 (extended) | 0 (not ours any more), ...} in the order of KEYS
RENEW_SCRIPT = """
local FIRST_TOKEN = 2
local lease_ms = ARGV[1]

local result = {}
for i, lock in ipairs(KEYS) do
    if redis.call('GET', lock) == ARGV[FIRST_TOKEN + i - 1] then
        result[i] = redis.call('PEXPIRE', lock, lease_ms)
    else
        result[i] = 0
    end
end
return result
"""
