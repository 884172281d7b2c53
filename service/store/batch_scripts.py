"""The Lua of batches (workers/delivery/batch.py): finish the jobs handled and take the next ones."""

from __future__ import annotations

# Finish the jobs just handled, if any, and take up to `take` queued jobs. A handled job is finished
# (its hash deleted, result not kept: result_ttl 0, as rq would) and no longer held; jobs it held
# itself (rq re-queued it after its worker died) go back to the queue.
# KEYS: queue, taken (this batch's list)
# ARGV: job_key_prefix (rq's "rq:job:"), batch_prefix (a job's own batch list without its id),
#       take (how many to take at most), spread (no more than a spread-th of the queue, at least one: the
#       threads taking share a short queue), state_prefix, in_hand_prefix (a user's state and in-hand keys without
#       the user's reference: keys.Keys.user_state_of(''), in_hand_of('')), hint_field,
#       then the ids of the jobs just handled
# Returns: {{id, data, hint}, ...} the jobs taken (none when the queue is empty), each with its rq
#          hash's data ('' when gone) and, for a user's job written by intake (uncompressed JSON, the
#          user's reference first of its arguments), the user's hint field from the state or in-hand
#          state ('' otherwise): it saves the job a round trip to find whose it is
NEXT_SCRIPT = """
local FIRST_FINISHED = 8
local queue = KEYS[1]
local taken = KEYS[2]
local job_key_prefix = ARGV[1]
local batch_prefix = ARGV[2]
local take = tonumber(ARGV[3])
local spread = tonumber(ARGV[4])
local state_prefix = ARGV[5]
local in_hand_prefix = ARGV[6]
local hint_field = ARGV[7]

for i = FIRST_FINISHED, #ARGV do
    local finished_id = ARGV[i]
    while redis.call('LMOVE', batch_prefix .. finished_id, queue, 'RIGHT', 'LEFT') do end
    redis.call('DEL', job_key_prefix .. finished_id)
    redis.call('LREM', taken, 1, finished_id)
end
if take > 1 then take = math.max(1, math.min(take, math.ceil(redis.call('LLEN', queue) / spread))) end
local result = {}
for _ = 1, take do
    local id = redis.call('LMOVE', queue, taken, 'LEFT', 'RIGHT')
    if not id then break end
    local data = redis.call('HGET', job_key_prefix .. id, 'data') or ''
    local hint = ''
    local decoded, call = pcall(cjson.decode, data)
    if decoded and type(call) == 'table' and type(call[3]) == 'table' and type(call[3][1]) == 'string' then
        local ref = call[3][1]
        hint = redis.call('HGET', state_prefix .. ref, hint_field)
            or redis.call('HGET', in_hand_prefix .. ref, hint_field) or ''
    end
    table.insert(result, {id, data, hint})
end
return result
"""
