"""The Lua of batches (workers/delivery/batch.py): finish a handled job and take the next one."""

from __future__ import annotations

# Finish the job just handled, if any, and take the next queued job, if asked. A handled job is
# finished (its hash deleted, result not kept: result_ttl 0, as rq would) and no longer held; jobs
# it held itself (rq re-queued it after its worker died) go back to the queue.
# KEYS: queue, taken (this batch's list), finished_job_key, finished_batch (the finished job's own
#       batch list)
# ARGV: job_key_prefix (rq's "rq:job:"), finished_id (the id of a job just handled, '' for none),
#       take ('1' to take the next one), state_prefix, in_hand_prefix (a user's state and in-hand keys
#       without the user's reference: keys.Keys.user_state_of(''), in_hand_of('')), hint_field
# Returns: nil (nothing taken) | {id, data, hint} (the job taken, its rq hash's data ('' when gone) and,
#          for a user's job written by intake (uncompressed JSON, the user's reference first of its
#          arguments), the user's hint field from the state or in-hand state ('' otherwise): it saves the
#          job a round trip to find whose it is)
NEXT_SCRIPT = """
local queue = KEYS[1]
local taken = KEYS[2]
local finished_job_key = KEYS[3]
local finished_batch = KEYS[4]
local job_key_prefix = ARGV[1]
local finished_id = ARGV[2]
local take = ARGV[3]
local state_prefix = ARGV[4]
local in_hand_prefix = ARGV[5]
local hint_field = ARGV[6]

if finished_id ~= '' then
    while redis.call('LMOVE', finished_batch, queue, 'RIGHT', 'LEFT') do end
    redis.call('DEL', finished_job_key)
    redis.call('LREM', taken, 1, finished_id)
end
if take ~= '1' then return false end
local id = redis.call('LMOVE', queue, taken, 'LEFT', 'RIGHT')
if not id then return false end
local data = redis.call('HGET', job_key_prefix .. id, 'data') or ''
local hint = ''
local decoded, call = pcall(cjson.decode, data)
if decoded and type(call) == 'table' and type(call[3]) == 'table' and type(call[3][1]) == 'string' then
    local ref = call[3][1]
    hint = redis.call('HGET', state_prefix .. ref, hint_field) or redis.call('HGET', in_hand_prefix .. ref, hint_field)
        or ''
end
return {id, data, hint}
"""
