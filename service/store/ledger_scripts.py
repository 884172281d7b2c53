"""The ledger's Lua scripts: accepting events (fanned out to every destination), counting
outcomes, dead-lettering and replaying. Each one changes the ledger and what it counts together
or not at all; each is headed by its KEYS and ARGV, read into named locals before any logic, and
has one wrapper in service/store/ledger.py whose parameters follow that header.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.store.dlq import DLQ_LUA
from service.store.ledger_dedup import DEDUP_LUA
from service.store.ledger_state import MERGE_LUA

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

# Accept an event for delivery, once per event id (the dedup check makes everything after it happen
# once): merged into its user's pending state for each destination (fan-out), counted in each
# destination's ledger, and, when the user had nothing pending there, one rq job queued for the user:
# N events for a user cost one job and one state. An event pending already under the same id (replayed
# from a dead letter kept under a digest of its body, or read back by a backfill past the dedup memory) is
# not merged a second time: this copy is counted coalesced into it.
# KEYS: dedup bucket_key, legacy_key, since_key (DedupCheck.script_keys), queues_set (rq's set of queues),
#       customer_map (the source's customer -> user),
#       then per destination (AcceptJobFanOut.script_keys): ledger, job_key, queue_key, pending (live lane), state,
#       in_hand
# ARGV: dedup prefix, digest, bucket, count, expire_at, shard, member (DedupCheck.script_args), data, timestamp,
#       description (JobWriter.user_args), now, ref (of pending), event_field, event_value, customer_id, user_id (when
#       both are given, the customer's user is learned, never re-pointed), lane (of a new job: its queue
#       is the fan-out's queue_key; `q` in the state remembers it),
#       then per destination (AcceptJobFanOut.script_args): job_id, origin (its rq queue's name),
#       then the update's state fields: field, value (service/store/ledger_state.py)
# Returns 1 (accepted), 0 (a duplicate), or the user a customer is learned for when the event names
# another one for it: nothing written (the caller dead-letters it as identity_conflict).
# Returns: 1 (accepted now) | 0 (a duplicate: counted as such in every ledger)
#          | the user the customer is mapped to (an identity conflict: nothing written)
ACCEPT_JOB_SCRIPT = (
    _JOB_LUA
    + _GROUPS_LUA
    + DEDUP_LUA
    + MERGE_LUA
    + """
local FIXED_KEYS, DESTINATION_KEYS = 5, 6
local FIXED_ARGS, DESTINATION_ARGS = 17, 2
local bucket_key = KEYS[1]
local legacy_key = KEYS[2]
local since_key = KEYS[3]
local queues_set = KEYS[4]
local customer_map = KEYS[5]
local prefix = ARGV[1]
local digest = ARGV[2]
local bucket = ARGV[3]
local count = ARGV[4]
local expire_at = ARGV[5]
local shard = ARGV[6]
local member = ARGV[7]
local data = ARGV[8]
local timestamp = ARGV[9]
local description = ARGV[10]
local now = ARGV[11]
local ref = ARGV[12]
local event_field = ARGV[13]
local event_value = ARGV[14]
local customer_id = ARGV[15]
local user_id = ARGV[16]
local lane = ARGV[17]

local destinations = group_count(KEYS, FIXED_KEYS, DESTINATION_KEYS)
local first_field = FIXED_ARGS + destinations * DESTINATION_ARGS + 1
-- A customer learned for one user is never re-pointed to another (a buyer-settable field may name
-- anyone): a new event naming another user for it writes nothing; the caller dead-letters it.
local function seen_before()
    return seen(legacy_key, since_key, prefix, digest, bucket, count, shard, member)
end
if customer_id ~= '' and user_id ~= '' and not seen_before() then
    local mapped = redis.call('HGET', customer_map, customer_id)
    if mapped and mapped ~= user_id then return mapped end
end
local fresh = first_seen(bucket_key, legacy_key, since_key, prefix, digest, bucket, count, expire_at, shard, member)
for d = 1, destinations do
    local ledger, job_key, queue_key, pending, state, in_hand = group(KEYS, FIXED_KEYS, DESTINATION_KEYS, d)
    local job_id, origin = group(ARGV, FIXED_ARGS, DESTINATION_ARGS, d)
    if not fresh then
        redis.call('HINCRBY', ledger, 'duplicates', 1)
    elseif pending_already(state, in_hand, event_field) then
        redis.call('HINCRBY', ledger, 'received', 1)
        redis.call('HINCRBY', ledger, 'coalesced', 1)
    else
        redis.call('HINCRBY', ledger, 'received', 1)
        local queued = redis.call('HGET', state, 'q')
        if not queued or (lane == 'live' and queued ~= 'live') then
            push_job(job_key, queue_key, queues_set, job_id, origin, data, timestamp, description)
            redis.call('HSET', state, 'q', lane)
            redis.call('ZADD', pending, 'NX', now, ref)
        end
        for i = first_field, #ARGV, 2 do merge_field(state, ARGV[i], ARGV[i + 1]) end
        redis.call('HSET', state, event_field, event_value)
    end
end
if fresh and customer_id ~= '' and user_id ~= '' then
    redis.call('HSETNX', customer_map, customer_id, user_id)
end
return fresh and 1 or 0
"""
)

# Accept an event that carries nothing to deliver, once per event id: counted as received and
# ignored in each destination's ledger.
# KEYS: dedup bucket_key, legacy_key, since_key, then per destination: ledger
# ARGV: dedup prefix, digest, bucket, count, expire_at, shard, member (DedupCheck.script_args)
# Returns: 1 (accepted now) | 0 (a duplicate: counted as such in every ledger)
IGNORE_SCRIPT = (
    _GROUPS_LUA
    + DEDUP_LUA
    + """
local FIXED_KEYS, DESTINATION_KEYS = 3, 1
local DEDUP_ARGS = 7
local bucket_key = KEYS[1]
local legacy_key = KEYS[2]
local since_key = KEYS[3]

local fresh = first_seen(bucket_key, legacy_key, since_key, unpack(ARGV, 1, DEDUP_ARGS))
for d = 1, group_count(KEYS, FIXED_KEYS, DESTINATION_KEYS) do
    local ledger = group(KEYS, FIXED_KEYS, DESTINATION_KEYS, d)
    if not fresh then
        redis.call('HINCRBY', ledger, 'duplicates', 1)
    else
        redis.call('HINCRBY', ledger, 'received', 1)
        redis.call('HINCRBY', ledger, 'ignored', 1)
    end
end
return fresh and 1 or 0
"""
)

# Accept an event that cannot be delivered (e.g. an invalid payload), once per event id: counted
# as received and dead-lettered in each destination's ledger, its item kept in each destination's
# dead-letter queue (trimmed to retention).
# KEYS: dedup bucket_key, legacy_key, since_key, then per destination (RejectFanOut.script_keys): ledger, dlq_items,
#       dlq_index, dlq_reasons, dlq_dropped (Keys.dlq)
# ARGV: dedup prefix, digest, bucket, count, expire_at, shard, member, dlq_id, reason, now, max_items,
#       cutoff (Retention.args),
#       then per destination (_RejectFanOut.script_args): item (its JSON)
# Returns: 1 (accepted now) | 0 (a duplicate: counted as such in every ledger)
REJECT_SCRIPT = (
    DLQ_LUA
    + _GROUPS_LUA
    + DEDUP_LUA
    + """
local FIXED_KEYS, DESTINATION_KEYS = 3, 5
local FIXED_ARGS, DESTINATION_ARGS = 12, 1
local DEDUP_ARGS = 7
local bucket_key = KEYS[1]
local legacy_key = KEYS[2]
local since_key = KEYS[3]
local dlq_id = ARGV[8]
local reason = ARGV[9]
local now = ARGV[10]
local max_items = ARGV[11]
local cutoff = ARGV[12]

local fresh = first_seen(bucket_key, legacy_key, since_key, unpack(ARGV, 1, DEDUP_ARGS))
for d = 1, group_count(KEYS, FIXED_KEYS, DESTINATION_KEYS) do
    local ledger, dlq_items, dlq_index, dlq_reasons, dlq_dropped = group(KEYS, FIXED_KEYS, DESTINATION_KEYS, d)
    local item = group(ARGV, FIXED_ARGS, DESTINATION_ARGS, d)
    if not fresh then
        redis.call('HINCRBY', ledger, 'duplicates', 1)
    else
        redis.call('HINCRBY', ledger, 'received', 1)
        redis.call('HINCRBY', ledger, 'dead_lettered', 1)
        dlq_keep({dlq_items, dlq_index, dlq_reasons, dlq_dropped}, dlq_id, item, reason, now, max_items, cutoff)
    end
end
return fresh and 1 or 0
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


@dataclass(frozen=True)
class AcceptJobFanOut:
    """One destination's groups in ACCEPT_JOB_SCRIPT: its KEYS, then its ARGV."""

    ledger: str
    job_key: str
    queue_key: str
    pending: str
    state: str
    in_hand: str
    job_id: str
    origin: str

    def script_keys(self) -> list[str]:
        return [self.ledger, self.job_key, self.queue_key, self.pending, self.state, self.in_hand]

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
