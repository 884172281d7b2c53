"""The ledger's Lua scripts: accepting events (fanned out to every destination), counting
outcomes, dead-lettering and replaying. Each one changes the ledger and what it counts together
or not at all; each is headed by its KEYS and ARGV, read into named locals before any logic, and
has one wrapper in service/store/ledger.py whose parameters follow that header.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.store.dlq import DLQ_LUA

# Count an outcome once per event (a re-run job must not count twice) and stop tracking it
# as pending. (outcome_key, ledger_key, outcome, ttl, pending member, pending keys) ->
# {1 if counted now else 0, when the event was accepted (its pending score, '' when not pending)}
_OUTCOME_LUA = """
local function count_outcome(outcome_key, ledger_key, outcome, ttl, member, pending_keys)
    local accepted = ''
    for _, key in ipairs(pending_keys) do
        if accepted == '' then accepted = redis.call('ZSCORE', key, member) or '' end
    end
    if redis.call('SET', outcome_key, outcome, 'NX', 'EX', ttl) then
        redis.call('HINCRBY', ledger_key, outcome, 1)
        for _, key in ipairs(pending_keys) do redis.call('ZREM', key, member) end
        return {1, accepted}
    end
    return {0, accepted}
end
"""

# Keep a user's trace entry (service/store/trace.py): newest first, the newest `keep` of them, for
# `ttl` seconds after the last one. Nothing when the entry is '' (tracing off, or no user).
_TRACE_LUA = """
local function trace_push(trace_key, entry, keep, ttl)
    if entry == '' then return end
    redis.call('LPUSH', trace_key, entry)
    redis.call('LTRIM', trace_key, 0, tonumber(keep) - 1)
    redis.call('EXPIRE', trace_key, ttl)
end
"""

# Write an rq job hash and queue it. JOB_FIELDS, filled in per lane by JobWriter, are the
# fields every delivery job shares, taken from rq; the rest are per job.
_JOB_LUA = """
local JOB_FIELDS = {%(job_fields)s}
local function push_job(job_key, queue_key, queues_set, job_id, origin, data, timestamp, description)
    redis.call('HSET', job_key, 'data', data, 'created_at', timestamp, 'enqueued_at', timestamp,
               'description', description, 'origin', origin, unpack(JOB_FIELDS))
    redis.call('RPUSH', queue_key, job_id)
    redis.call('SADD', queues_set, queue_key)
end
"""

# Repeated groups: after a script's fixed KEYS (or ARGV) come groups of a fixed size, one per
# destination (fan-out) or per event, for the script to name:
#     for d = 1, group_count(KEYS, FIXED_KEYS, DESTINATION_KEYS) do
#         local ledger, job_key = group(KEYS, FIXED_KEYS, DESTINATION_KEYS, d)
_GROUPS_LUA = """
local function group_count(list, fixed, size)
    return (#list - fixed) / size
end
local function group(list, fixed, size, index)
    local first = fixed + (index - 1) * size + 1
    return unpack(list, first, first + size - 1)
end
"""

# Accept an event for delivery, once per event id (the dedup key makes everything after it happen
# once): an rq job for each destination (fan-out), counted in each destination's ledger, and the
# update parked for its user at once, so that a backlog for one user goes out as one merged update.
# KEYS: dedup_key, queues_set (rq's set of queues), customer_map (the source's customer -> user),
#       then per destination (_AcceptJobFanOut.script_keys): ledger, job_key, queue_key, pending (live lane), parked
# ARGV: dedup_ttl, data, timestamp, description (JobWriter.args), now, member (of pending), event_id,
#       parked_update (the update JSON to park, '' when intake cannot tell who it is for),
#       customer_id, user_id (when both are given, the customer's user is learned, never re-pointed),
#       then per destination (_AcceptJobFanOut.script_args): job_id, origin (its rq queue's name)
# Returns: 1 (accepted now) | 0 (a duplicate: counted as such in every ledger)
#          | the user the customer is mapped to (an identity conflict: nothing written)
ACCEPT_JOB_SCRIPT = (
    _JOB_LUA
    + _GROUPS_LUA
    + """
local FIXED_KEYS, DESTINATION_KEYS = 3, 5
local FIXED_ARGS, DESTINATION_ARGS = 10, 2
local dedup_key = KEYS[1]
local queues_set = KEYS[2]
local customer_map = KEYS[3]
local dedup_ttl = ARGV[1]
local data = ARGV[2]
local timestamp = ARGV[3]
local description = ARGV[4]
local now = ARGV[5]
local member = ARGV[6]
local event_id = ARGV[7]
local parked_update = ARGV[8]
local customer_id = ARGV[9]
local user_id = ARGV[10]

-- A customer learned for one user is never re-pointed to another (a buyer-settable field may name
-- anyone): a new event naming another user for it writes nothing; the caller dead-letters it.
if customer_id ~= '' and user_id ~= '' and redis.call('EXISTS', dedup_key) == 0 then
    local mapped = redis.call('HGET', customer_map, customer_id)
    if mapped and mapped ~= user_id then return mapped end
end
local first_seen = redis.call('SET', dedup_key, '1', 'NX', 'EX', dedup_ttl)
for d = 1, group_count(KEYS, FIXED_KEYS, DESTINATION_KEYS) do
    local ledger, job_key, queue_key, pending, parked = group(KEYS, FIXED_KEYS, DESTINATION_KEYS, d)
    local job_id, origin = group(ARGV, FIXED_ARGS, DESTINATION_ARGS, d)
    if not first_seen then
        redis.call('HINCRBY', ledger, 'duplicates', 1)
    else
        redis.call('HINCRBY', ledger, 'received', 1)
        push_job(job_key, queue_key, queues_set, job_id, origin, data, timestamp, description)
        redis.call('ZADD', pending, now, member)
        if parked_update ~= '' then redis.call('HSET', parked, event_id, parked_update) end
    end
end
if first_seen and customer_id ~= '' and user_id ~= '' then
    redis.call('HSETNX', customer_map, customer_id, user_id)
end
return first_seen and 1 or 0
"""
)

# Accept an event that carries nothing to deliver, once per event id: counted as received and
# ignored in each destination's ledger.
# KEYS: dedup_key, then per destination: ledger
# ARGV: dedup_ttl
# Returns: 1 (accepted now) | 0 (a duplicate: counted as such in every ledger)
IGNORE_SCRIPT = (
    _GROUPS_LUA
    + """
local FIXED_KEYS, DESTINATION_KEYS = 1, 1
local dedup_key = KEYS[1]
local dedup_ttl = ARGV[1]

local first_seen = redis.call('SET', dedup_key, '1', 'NX', 'EX', dedup_ttl)
for d = 1, group_count(KEYS, FIXED_KEYS, DESTINATION_KEYS) do
    local ledger = group(KEYS, FIXED_KEYS, DESTINATION_KEYS, d)
    if not first_seen then
        redis.call('HINCRBY', ledger, 'duplicates', 1)
    else
        redis.call('HINCRBY', ledger, 'received', 1)
        redis.call('HINCRBY', ledger, 'ignored', 1)
    end
end
return first_seen and 1 or 0
"""
)

# Accept an event that cannot be delivered (e.g. an invalid payload), once per event id: counted
# as received and dead-lettered in each destination's ledger, its item kept in each destination's
# dead-letter queue (trimmed to retention).
# KEYS: dedup_key, then per destination (_RejectFanOut.script_keys): ledger, dlq_items, dlq_index,
#       dlq_reasons, dlq_dropped (Keys.dlq)
# ARGV: dedup_ttl, dlq_id, reason, now, max_items, cutoff (Retention.args),
#       then per destination (_RejectFanOut.script_args): item (its JSON)
# Returns: 1 (accepted now) | 0 (a duplicate: counted as such in every ledger)
REJECT_SCRIPT = (
    DLQ_LUA
    + _GROUPS_LUA
    + """
local FIXED_KEYS, DESTINATION_KEYS = 1, 5
local FIXED_ARGS, DESTINATION_ARGS = 6, 1
local dedup_key = KEYS[1]
local dedup_ttl = ARGV[1]
local dlq_id = ARGV[2]
local reason = ARGV[3]
local now = ARGV[4]
local max_items = ARGV[5]
local cutoff = ARGV[6]

local first_seen = redis.call('SET', dedup_key, '1', 'NX', 'EX', dedup_ttl)
for d = 1, group_count(KEYS, FIXED_KEYS, DESTINATION_KEYS) do
    local ledger, dlq_items, dlq_index, dlq_reasons, dlq_dropped = group(KEYS, FIXED_KEYS, DESTINATION_KEYS, d)
    local item = group(ARGV, FIXED_ARGS, DESTINATION_ARGS, d)
    if not first_seen then
        redis.call('HINCRBY', ledger, 'duplicates', 1)
    else
        redis.call('HINCRBY', ledger, 'received', 1)
        redis.call('HINCRBY', ledger, 'dead_lettered', 1)
        dlq_keep({dlq_items, dlq_index, dlq_reasons, dlq_dropped}, dlq_id, item, reason, now, max_items, cutoff)
    end
end
return first_seen and 1 or 0
"""
)

# Count an event as dead-lettered and keep its item (and the user's trace entry), together.
# KEYS: outcome_key, ledger, pending_live, pending_replay, dlq_items, dlq_index, dlq_reasons, dlq_dropped,
#       trace_key (relay:trace:<destination>:<user id>)
# ARGV: outcome_ttl, member (of pending), dlq_id, item (its JSON), reason, now, max_items, cutoff,
#       trace_entry (its JSON, '' for none), trace_keep, trace_ttl
# Returns: {counted: 1 (counted now) | 0 (already counted: a re-run job),
#           accepted_at: when the event was accepted, as a string ('' when no longer pending)}
DEAD_LETTER_SCRIPT = (
    DLQ_LUA
    + _OUTCOME_LUA
    + _TRACE_LUA
    + """
local outcome_key = KEYS[1]
local ledger = KEYS[2]
local pending_live = KEYS[3]
local pending_replay = KEYS[4]
local dlq_items = KEYS[5]
local dlq_index = KEYS[6]
local dlq_reasons = KEYS[7]
local dlq_dropped = KEYS[8]
local trace_key = KEYS[9]
local outcome_ttl = ARGV[1]
local member = ARGV[2]
local dlq_id = ARGV[3]
local item = ARGV[4]
local reason = ARGV[5]
local now = ARGV[6]
local max_items = ARGV[7]
local cutoff = ARGV[8]
local trace_entry = ARGV[9]
local trace_keep = ARGV[10]
local trace_ttl = ARGV[11]

local pending_keys = {pending_live, pending_replay}
local result = count_outcome(outcome_key, ledger, 'dead_lettered', outcome_ttl, member, pending_keys)
if result[1] == 1 then
    -- kept only with its count: an event already settled (e.g. delivered, then its job failed
    -- inside rq) is not dead-lettered too, so the queue and the ledger never disagree
    dlq_keep({dlq_items, dlq_index, dlq_reasons, dlq_dropped}, dlq_id, item, reason, now, max_items, cutoff)
    trace_push(trace_key, trace_entry, trace_keep, trace_ttl)
end
return result
"""
)

# Count the outcomes of one delivery (the update sent and those merged into it, or the updates
# found to carry nothing), end the user's lease, keep what the destination learned and release the
# delivery's rate-limit slots, and keep the user's trace entry of the delivery, in one step.
# KEYS: ledger, last_delivery, pending_live, pending_replay, lock, memory_key, limiter_in_flight,
#       trace_key (relay:trace:<destination>:<user id>), then per event: outcome_key
# ARGV: outcome_ttl, now, token (of the lease; '' when no lease is held),
#       memory_change ('' to leave the memory, else 'set:<value>' or 'del'), memory_ttl,
#       slots (the call slots to release, space-separated tokens),
#       trace_entry (its JSON, '' for none), trace_keep, trace_ttl,
#       then per event: outcome, member (of pending)
# Returns: per event {counted: 1 (counted now) | 0 (already counted),
#                     accepted_at: when the event was accepted, as a string ('' when no longer pending)}
SETTLE_SCRIPT = (
    _OUTCOME_LUA
    + _GROUPS_LUA
    + _TRACE_LUA
    + """
local FIXED_KEYS, EVENT_KEYS = 8, 1
local FIXED_ARGS, EVENT_ARGS = 9, 2
local ledger = KEYS[1]
local last_delivery = KEYS[2]
local pending_live = KEYS[3]
local pending_replay = KEYS[4]
local lock = KEYS[5]
local memory_key = KEYS[6]
local limiter_in_flight = KEYS[7]
local trace_key = KEYS[8]
local outcome_ttl = ARGV[1]
local now = ARGV[2]
local token = ARGV[3]
local memory_change = ARGV[4]
local memory_ttl = ARGV[5]
local slots = ARGV[6]
local trace_entry = ARGV[7]
local trace_keep = ARGV[8]
local trace_ttl = ARGV[9]

for slot in string.gmatch(slots, '%S+') do redis.call('ZREM', limiter_in_flight, slot) end
local pending_keys = {pending_live, pending_replay}
local result = {}
for e = 1, group_count(KEYS, FIXED_KEYS, EVENT_KEYS) do
    local outcome_key = group(KEYS, FIXED_KEYS, EVENT_KEYS, e)
    local outcome, member = group(ARGV, FIXED_ARGS, EVENT_ARGS, e)
    table.insert(result, count_outcome(outcome_key, ledger, outcome, outcome_ttl, member, pending_keys))
    if outcome == 'delivered' then redis.call('SET', last_delivery, now) end
end
if token ~= '' and redis.call('GET', lock) == token then redis.call('DEL', lock) end
if memory_change == 'del' then
    redis.call('DEL', memory_key)
elseif memory_change ~= '' then
    redis.call('SET', memory_key, string.sub(memory_change, 5), 'EX', memory_ttl)
end
trace_push(trace_key, trace_entry, trace_keep, trace_ttl)
return result
"""
)


# Take an item out of the dead-letter queue and queue its update on the replay lane: the event
# goes back to "in flight" (dead_lettered - 1) and its next outcome is counted afresh.
# KEYS: dlq_items, dlq_index, dlq_reasons, dlq_dropped, ledger, outcome_key, job_key, queue_key (replay lane),
#       queues_set, pending (replay lane)
# ARGV: dlq_id, job_id, origin, data, timestamp, description (JobWriter.args), now, member (of pending)
# Returns: 1 (replayed) | 0 (the item is gone: deleted or replayed meanwhile)
REPLAY_SCRIPT = (
    DLQ_LUA
    + _JOB_LUA
    + """
local dlq_items = KEYS[1]
local dlq_index = KEYS[2]
local dlq_reasons = KEYS[3]
local dlq_dropped = KEYS[4]
local ledger = KEYS[5]
local outcome_key = KEYS[6]
local job_key = KEYS[7]
local queue_key = KEYS[8]
local queues_set = KEYS[9]
local pending = KEYS[10]
local dlq_id = ARGV[1]
local job_id = ARGV[2]
local origin = ARGV[3]
local data = ARGV[4]
local timestamp = ARGV[5]
local description = ARGV[6]
local now = ARGV[7]
local member = ARGV[8]

if not dlq_remove({dlq_items, dlq_index, dlq_reasons, dlq_dropped}, dlq_id) then return 0 end
redis.call('HINCRBY', ledger, 'dead_lettered', -1)
redis.call('HINCRBY', ledger, 'replayed', 1)
redis.call('DEL', outcome_key)
push_job(job_key, queue_key, queues_set, job_id, origin, data, timestamp, description)
redis.call('ZADD', pending, now, member)
return 1
"""
)


@dataclass(frozen=True)
class AcceptJobFanOut:
    """One destination's groups in ACCEPT_JOB_SCRIPT: its KEYS, then its ARGV."""

    ledger: str
    job_key: str
    queue_key: str
    pending: str
    parked: str
    job_id: str
    origin: str

    def script_keys(self) -> list[str]:
        return [self.ledger, self.job_key, self.queue_key, self.pending, self.parked]

    def script_args(self) -> list[str]:
        return [self.job_id, self.origin]


@dataclass(frozen=True)
class RejectFanOut:
    """One destination's groups in REJECT_SCRIPT: its KEYS (ledger, then the four of Keys.dlq), then its ARGV."""

    ledger: str
    dlq: list[str]  # dlq_items, dlq_index, dlq_reasons, dlq_dropped
    item: str

    def script_keys(self) -> list[str]:
        return [self.ledger, *self.dlq]

    def script_args(self) -> list[str]:
        return [self.item]
