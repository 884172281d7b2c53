"""The ledger's Lua scripts for per-user delivery: counting the outcomes of one user's delivery, and
replaying a dead-lettered event into its user's pending state. Headed by KEYS and ARGV, read into
named locals first; one wrapper each in service/store/ledger_user.py."""

from __future__ import annotations

from service.store.dlq import DLQ_LUA
from service.store.ledger_scripts import _GROUPS_LUA, _JOB_LUA, _TRACE_LUA
from service.store.ledger_state import MERGE_LUA

# An event's `e:` value (service/store/ledger_state.py, either format) -> when it was accepted (decimal
# seconds, as a string), whether a per-event job from before the upgrade queued it
EVENT_LUA = """
local function accepted_and_legacy(value)
    local old = string.match(value, '^(%d+)|')
    if old then return old, string.sub(value, -2) == '|L' end
    local at = string.match(value, '^!?([^,]*)')
    return string.format('%d', tonumber(at, 36)), string.sub(value, 1, 1) == '!'
end
"""

# Count the outcome of each event in the user's in-hand state once (an event counts when it leaves
# the in-hand hash, so a re-run never counts twice), keep the dead-letter item of each one
# dead-lettered, end the lease, keep what the destination learned, release the call slots and trace
# it, in one step; a user with events still pending (come during the call, or kept for a retry) is dated
# in pending by the oldest of them. Nothing happens when another job holds the user's lease (it took the user over).
# KEYS: ledger, last_delivery, lock, memory_key, limiter_in_flight, trace_key, in_hand, state,
#       dlq_items, dlq_index, dlq_reasons, dlq_dropped, then per lane: pending
# ARGV: token ('' when no lease is held), now, memory_change ('' to leave the memory, else 'set:<value>'
#       or 'del'), memory_ttl, slots (space-separated), trace_entry ('' for none), trace_keep, trace_ttl,
#       ref (the user's member of pending), outcome_prefix ("<prefix>:outcome:<source>:", for events of
#       per-event jobs from before the upgrade), outcome_ttl, legacy_member_prefix ("<source>:"),
#       max_items, cutoff (Retention.args),
#       then per event: event_id, outcome, reason, dlq_id, item ('' unless dead_lettered), trace entry of
#       the dead letter ('' for none)
# Returns: nil (another job holds the lease: nothing counted)
#        | per event {counted: 1 | 0, accepted_at ('' when not counted now)}
SETTLE_USER_SCRIPT = (
    DLQ_LUA
    + _GROUPS_LUA
    + _TRACE_LUA
    + EVENT_LUA
    + """
local FIXED_KEYS = 12
local FIXED_ARGS, EVENT_ARGS = 14, 6
local ledger = KEYS[1]
local last_delivery = KEYS[2]
local lock = KEYS[3]
local memory_key = KEYS[4]
local limiter_in_flight = KEYS[5]
local trace_key = KEYS[6]
local in_hand = KEYS[7]
local state = KEYS[8]
local dlq = {KEYS[9], KEYS[10], KEYS[11], KEYS[12]}
local token = ARGV[1]
local now = ARGV[2]
local memory_change = ARGV[3]
local memory_ttl = ARGV[4]
local slots = ARGV[5]
local trace_entry = ARGV[6]
local trace_keep = ARGV[7]
local trace_ttl = ARGV[8]
local ref = ARGV[9]
local outcome_prefix = ARGV[10]
local outcome_ttl = ARGV[11]
local legacy_member_prefix = ARGV[12]
local max_items = ARGV[13]
local cutoff = ARGV[14]

-- Another job holds the user (it took the state over: it counts it). A lease that lapsed with no one taking
-- it (Redis slow or restarted during the call) still counts: the call was made, and nothing else will.
if token ~= '' then
    local holder = redis.call('GET', lock)
    if holder and holder ~= token then return false end
end
for slot in string.gmatch(slots, '%S+') do redis.call('ZREM', limiter_in_flight, slot) end
local result = {}
for e = 1, group_count(ARGV, FIXED_ARGS, EVENT_ARGS) do
    local event_id, outcome, reason, dlq_id, item, dead_trace = group(ARGV, FIXED_ARGS, EVENT_ARGS, e)
    local value = redis.call('HGET', in_hand, 'e:' .. event_id)
    if value then
        redis.call('HDEL', in_hand, 'e:' .. event_id)
        redis.call('HINCRBY', ledger, outcome, 1)
        if outcome == 'delivered' then redis.call('SET', last_delivery, now) end
        if outcome == 'dead_lettered' then
            dlq_keep(dlq, dlq_id, item, reason, now, max_items, cutoff)
            trace_push(trace_key, dead_trace, trace_keep, trace_ttl)
        end
        local accepted, legacy = accepted_and_legacy(value)
        if legacy then
            redis.call('SET', outcome_prefix .. event_id, outcome, 'EX', outcome_ttl)
            for l = FIXED_KEYS + 1, #KEYS do redis.call('ZREM', KEYS[l], legacy_member_prefix .. event_id) end
        end
        table.insert(result, {1, accepted})
    else
        table.insert(result, {0, ''})
    end
end
local left = false
for _, name in ipairs(redis.call('HKEYS', in_hand)) do
    if string.sub(name, 1, 2) == 'e:' then left = true end
end
if not left then redis.call('DEL', in_hand) end
if token ~= '' then redis.call('DEL', lock) end
if redis.call('EXISTS', state) == 0 and redis.call('EXISTS', in_hand) == 0 then
    for l = FIXED_KEYS + 1, #KEYS do redis.call('ZREM', KEYS[l], ref) end
else
    -- Still pending (events that came during the call, or kept for a retry): the user has waited since the
    -- oldest of those was accepted, not since the first event of an earlier delivery (a user updated without
    -- pause would look stuck ever longer: /status, relay_oldest_pending_age_seconds).
    local oldest = nil
    for _, hash in ipairs({state, in_hand}) do
        local fields = redis.call('HGETALL', hash)
        for i = 1, #fields, 2 do
            if string.sub(fields[i], 1, 2) == 'e:' then
                local accepted = tonumber((accepted_and_legacy(fields[i + 1])))
                if oldest == nil or accepted < oldest then oldest = accepted end
            end
        end
    end
    if oldest then
        for l = FIXED_KEYS + 1, #KEYS do redis.call('ZADD', KEYS[l], 'XX', oldest, ref) end
    end
end
if memory_change == 'del' then
    redis.call('DEL', memory_key)
elseif memory_change ~= '' then
    if memory_ttl == '0' then
        redis.call('SET', memory_key, string.sub(memory_change, 5))
    else
        redis.call('SET', memory_key, string.sub(memory_change, 5), 'EX', memory_ttl)
    end
end
trace_push(trace_key, trace_entry, trace_keep, trace_ttl)
return result
"""
)

# Take an item out of the dead-letter queue and merge its update into its user's pending state, queuing
# the user on the replay lane when nothing was pending: the event goes back to "in flight"
# (dead_lettered - 1) and its next outcome is counted afresh. An event pending already under the same id
# (an invalid payload's dead letter is kept under a digest of its body: the same event, sent again and
# accepted since) is not merged a second time: the replayed copy is counted coalesced into it at once.
# The outcome key a per-event job from before the upgrade set stays: a re-run of that job, once the
# replayed copy is delivered, must find the event counted (Ordering.park), not deliver it again.
# KEYS: dlq_items, dlq_index, dlq_reasons, dlq_dropped, ledger, job_key, queue_key (replay lane), queues_set,
#       pending (replay lane), state, in_hand
# ARGV: dlq_id, job_id, origin, data, timestamp, description (JobWriter.user_args), now, ref,
#       event_field, event_value, lane (the replay lane's name: the state's `q`, as accepting sets it, so an
#       event accepted next queues no second job unless it is live), then the update's state fields: field, value
# Returns: 1 (replayed) | 0 (the item is gone: deleted or replayed meanwhile)
REPLAY_USER_SCRIPT = (
    DLQ_LUA
    + _JOB_LUA
    + MERGE_LUA
    + """
local FIRST_FIELD = 12
local dlq = {KEYS[1], KEYS[2], KEYS[3], KEYS[4]}
local ledger = KEYS[5]
local job_key = KEYS[6]
local queue_key = KEYS[7]
local queues_set = KEYS[8]
local pending = KEYS[9]
local state = KEYS[10]
local in_hand = KEYS[11]
local dlq_id = ARGV[1]
local job_id = ARGV[2]
local origin = ARGV[3]
local data = ARGV[4]
local timestamp = ARGV[5]
local description = ARGV[6]
local now = ARGV[7]
local ref = ARGV[8]
local event_field = ARGV[9]
local event_value = ARGV[10]
local lane = ARGV[11]

if not dlq_remove(dlq, dlq_id) then return 0 end
redis.call('HINCRBY', ledger, 'dead_lettered', -1)
redis.call('HINCRBY', ledger, 'replayed', 1)
if pending_already(state, in_hand, event_field) then
    redis.call('HINCRBY', ledger, 'coalesced', 1)
    return 1
end
if redis.call('EXISTS', state) == 0 then
    push_job(job_key, queue_key, queues_set, job_id, origin, data, timestamp, description)
    redis.call('HSET', state, 'q', lane)
    redis.call('ZADD', pending, 'NX', now, ref)
end
for i = FIRST_FIELD, #ARGV, 2 do merge_field(state, ARGV[i], ARGV[i + 1]) end
redis.call('HSET', state, event_field, event_value)
return 1
"""
)
