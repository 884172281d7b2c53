"""The Lua of batches (workers/delivery/batch.py): finish a handled job and take the next one."""

from __future__ import annotations

# Finish the job just handled, if any, and take the next queued job, if asked. A handled job is
# finished (its hash deleted, result not kept: result_ttl 0, as rq would) and no longer held; jobs
# it held itself (rq re-queued it after its worker died) go back to the queue.
# KEYS: queue, taken (this batch's list), finished_job_key, finished_batch (the finished job's own
#       batch list)
# ARGV: job_key_prefix (rq's "rq:job:"), finished_id (the id of a job just handled, '' for none),
#       take ('1' to take the next one)
# Returns: nil (nothing taken) | {id, data} (the job taken and its rq hash's data, '' when gone)
NEXT_SCRIPT = """
local queue = KEYS[1]
local taken = KEYS[2]
local finished_job_key = KEYS[3]
local finished_batch = KEYS[4]
local job_key_prefix = ARGV[1]
local finished_id = ARGV[2]
local take = ARGV[3]

if finished_id ~= '' then
    while redis.call('LMOVE', finished_batch, queue, 'RIGHT', 'LEFT') do end
    redis.call('DEL', finished_job_key)
    redis.call('LREM', taken, 1, finished_id)
end
if take ~= '1' then return false end
local id = redis.call('LMOVE', queue, taken, 'LEFT', 'RIGHT')
if not id then return false end
return {id, redis.call('HGET', job_key_prefix .. id, 'data') or ''}
"""
