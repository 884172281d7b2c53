"""Durable writes to Redis: accepting events, counting outcomes, dead-lettering.

Every write that changes the ledger is one Lua script, so the ledger and what it counts
change together or not at all: received = delivered + coalesced + ignored + dead_lettered
+ in flight holds at every instant.

Accepting an event writes an rq job hash and pushes its id in the same script, the way rq's
own unique-enqueue script does (rq.scripts.save_unique_job); the fields come from rq's
`Job.to_dict()` (service.jobs), so workers read them as any rq job. One round trip instead of
rq's several keeps the webhook endpoint near the cost of a bare RPUSH.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from redis import Redis

from service import keys
from service.config import Settings
from service.dlq import DLQ_KEYS, DLQ_LUA, DeadLetter, DeadLetterQueue, DlqFilter, Retention
from service.jobs import JobWriter, job_id_for
from service.updates import UserUpdate

# Count an outcome once per event (a re-run job must not count twice) and stop tracking it
# as pending. (outcome_key, ledger_key, outcome, ttl, pending member) -> 1 if counted now
_OUTCOME_LUA = """
local function count_outcome(outcome_key, ledger_key, outcome, ttl, member, pending_keys)
    if redis.call('SET', outcome_key, outcome, 'NX', 'EX', ttl) then
        redis.call('HINCRBY', ledger_key, outcome, 1)
        for _, key in ipairs(pending_keys) do redis.call('ZREM', key, member) end
        return 1
    end
    return 0
end
"""

# Write an rq job hash and queue it. JOB_FIELDS, filled in per lane by JobWriter, are the
# fields every delivery job shares, taken from rq; ARGV gives data, timestamp, description.
_JOB_LUA = """
local JOB_FIELDS = {%(job_fields)s}
local function push_job(job_key, queue_key, queues_set, job_id, data, timestamp, description)
    redis.call('HSET', job_key, 'data', data, 'created_at', timestamp, 'enqueued_at', timestamp,
               'description', description, unpack(JOB_FIELDS))
    redis.call('RPUSH', queue_key, job_id)
    redis.call('SADD', queues_set, queue_key)
end
"""

# The dedup key makes everything after it happen once per event id.
# KEYS: dedup, ledger, then per mode:
#   job:         job_key, queue_key, queues_set, pending_live
#                ARGV[3]=job_id, ARGV[4]=data, ARGV[5]=timestamp, ARGV[6]=description, ARGV[7]=now, ARGV[8]=member
#                and, when intake knows who the update is for: KEYS[7]=parked, ARGV[9]=event id, ARGV[10]=update
#   ignore:      (none)
#   dead_letter: the four DLQ keys
#                ARGV[3]=dlq_id, ARGV[4]=item JSON, ARGV[5]=reason, ARGV[6]=now, ARGV[7]=max items, ARGV[8]=cutoff
# ARGV: dedup_ttl, mode. Returns 1 when accepted now, 0 for a duplicate.
ACCEPT_SCRIPT = (
    DLQ_LUA
    + _JOB_LUA
    + """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
    redis.call('HINCRBY', KEYS[2], 'duplicates', 1)
    return 0
end
redis.call('HINCRBY', KEYS[2], 'received', 1)
local mode = ARGV[2]
if mode == 'job' then
    push_job(KEYS[3], KEYS[4], KEYS[5], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
    redis.call('ZADD', KEYS[6], ARGV[7], ARGV[8])
    if #KEYS >= 7 then redis.call('HSET', KEYS[7], ARGV[9], ARGV[10]) end
elseif mode == 'ignore' then
    redis.call('HINCRBY', KEYS[2], 'ignored', 1)
elseif mode == 'dead_letter' then
    redis.call('HINCRBY', KEYS[2], 'dead_lettered', 1)
    dlq_keep({KEYS[3], KEYS[4], KEYS[5], KEYS[6]}, ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
else
    return redis.error_reply('unknown mode ' .. mode)
end
return 1
"""
)

# KEYS: outcome_key, ledger, last_delivery, pending_live, pending_replay, [the four DLQ keys]
# ARGV: outcome ('delivered' | 'coalesced' | 'dead_lettered'), outcome_ttl, member, now,
#       [dlq_id, item JSON, reason, max items, cutoff]
# Returns {1 when counted now, 0 when already counted (a re-run job); time accepted, as a string}.
RECORD_OUTCOME_SCRIPT = (
    DLQ_LUA
    + _OUTCOME_LUA
    + """
local accepted = redis.call('ZSCORE', KEYS[4], ARGV[3]) or redis.call('ZSCORE', KEYS[5], ARGV[3]) or ''
local counted = count_outcome(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], {KEYS[4], KEYS[5]})
if ARGV[1] == 'delivered' then
    redis.call('SET', KEYS[3], ARGV[4])
elseif ARGV[1] == 'dead_lettered' then
    dlq_keep({KEYS[6], KEYS[7], KEYS[8], KEYS[9]}, ARGV[5], ARGV[6], ARGV[7], ARGV[4], ARGV[8], ARGV[9])
end
return {counted, accepted}
"""
)

# Take an item out of the dead-letter queue and queue its update on the replay lane: the event
# goes back to "in flight" (dead_lettered - 1) and its next outcome is counted afresh.
# KEYS: the four DLQ keys, ledger, outcome_key, job_key, replay_queue_key, queues_set, pending_replay
# ARGV: dlq_id, job_id, data, timestamp, description, now, member
# Returns 0 when the item is gone (deleted or replayed meanwhile).
REPLAY_SCRIPT = (
    DLQ_LUA
    + _JOB_LUA
    + """
if not dlq_remove({KEYS[1], KEYS[2], KEYS[3], KEYS[4]}, ARGV[1]) then return 0 end
redis.call('HINCRBY', KEYS[5], 'dead_lettered', -1)
redis.call('HINCRBY', KEYS[5], 'replayed', 1)
redis.call('DEL', KEYS[6])
push_job(KEYS[7], KEYS[8], KEYS[9], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[10], ARGV[6], ARGV[7])
return 1
"""
)

LEDGER_FIELDS = ("received", "delivered", "coalesced", "ignored", "dead_lettered")


def ledger_from(raw: dict[bytes, bytes]) -> dict[str, int]:
    """The ledger hash as read from Redis -> counts, with in flight = received - everything settled."""
    counts = {name.decode(): int(value) for name, value in raw.items()}
    ledger = {name: counts.get(name, 0) for name in LEDGER_FIELDS}
    ledger["in_flight"] = ledger["received"] - sum(ledger[name] for name in LEDGER_FIELDS if name != "received")
    ledger["duplicates"] = counts.get("duplicates", 0)
    ledger["replayed"] = counts.get("replayed", 0)
    return ledger


@dataclass(frozen=True)
class Settled:
    counted: bool  # False: this event's outcome was counted before (a job that ran twice)
    accepted_at: float | None  # when the event was accepted (or replayed), if still tracked

    def __bool__(self) -> bool:
        return self.counted


class Store:
    """Intake, outcomes and replays: every write that moves an event through the ledger."""

    def __init__(self, redis: Redis, *, dedup_ttl: int, retention: Retention) -> None:
        self.redis = redis
        self.dedup_ttl = dedup_ttl
        self.retention = retention
        live, replay = JobWriter(redis, keys.LIVE), JobWriter(redis, keys.REPLAY)
        self._jobs = {keys.LIVE: live, keys.REPLAY: replay}
        self._accept = redis.register_script(live.lua(ACCEPT_SCRIPT))
        self._record = redis.register_script(RECORD_OUTCOME_SCRIPT)
        self._replay = redis.register_script(replay.lua(REPLAY_SCRIPT))

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> Store:
        retention = Retention(max_items=settings.dlq_max_items, ttl_seconds=settings.dlq_ttl_days * 24 * 3600)
        return cls(redis, dedup_ttl=settings.dedup_ttl_seconds, retention=retention)

    def dlq(self) -> DeadLetterQueue:
        return DeadLetterQueue(self.redis, self.retention)

    def accept(self, update: UserUpdate) -> bool:
        """Queue the update for delivery; False if this event id was accepted before."""
        job_id = job_id_for(update)
        job_keys = [
            keys.RQ_JOB_KEY_PREFIX + job_id,
            keys.rq_queue_key(keys.LIVE),
            keys.RQ_QUEUES_SET,
            keys.pending(keys.LIVE),
        ]
        member = keys.pending_member(update.source, update.event_id)
        update_json = json.dumps(update.to_dict(), separators=(",", ":"))
        args = [job_id, *self._jobs[keys.LIVE].args(update, update_json), time.time(), member]
        if update.hint is not None:
            # Parked at once, so that a backlog for one user goes out as one merged update.
            job_keys.append(keys.parked(update.source, update.hint))
            args += [update.event_id, update_json]
        return self._run(update.source, update.event_id, "job", job_keys, args)

    def ignore(self, source: str, event_id: str) -> bool:
        return self._run(source, event_id, "ignore", [], [])

    def reject(self, item: DeadLetter, dedup_id: str) -> bool:
        """Keep an event that could not be accepted for delivery (e.g. invalid payload)."""
        args = [item.id, item.to_json(), item.reason, time.time(), *self.retention.args()]
        return self._run(item.source, dedup_id, "dead_letter", DLQ_KEYS, args)

    def _run(self, source: str, event_id: str, mode: str, extra_keys: list[str], extra_args: list[Any]) -> bool:
        script_keys = [keys.dedup(source, event_id), keys.LEDGER, *extra_keys]
        return bool(self._accept(keys=script_keys, args=[self.dedup_ttl, mode, *extra_args]))

    def _outcome(
        self, outcome: str, source: str, event_id: str, extra_keys: list[str], extra_args: list[Any]
    ) -> Settled:
        script_keys = [
            keys.outcome(source, event_id),
            keys.LEDGER,
            keys.LAST_DELIVERY,
            keys.pending(keys.LIVE),
            keys.pending(keys.REPLAY),
            *extra_keys,
        ]
        args = [outcome, self.dedup_ttl, keys.pending_member(source, event_id), time.time(), *extra_args]
        counted, accepted = self._record(keys=script_keys, args=args)
        return Settled(bool(counted), float(accepted) if accepted else None)

    def settled(self, update: UserUpdate) -> bool:
        """Whether this event's outcome is counted (by its own job or one that merged it)."""
        return bool(self.redis.exists(keys.outcome(update.source, update.event_id)))

    def record_delivered(self, update: UserUpdate) -> Settled:
        return self._outcome("delivered", update.source, update.event_id, [], [])

    def record_coalesced(self, update: UserUpdate) -> Settled:
        """Everything the update carried is already superseded by newer values sent for its user."""
        return self._outcome("coalesced", update.source, update.event_id, [], [])

    def dead_letter(self, item: DeadLetter) -> Settled:
        args = [item.id, item.to_json(), item.reason, *self.retention.args()]
        return self._outcome("dead_lettered", item.source, item.event_id or item.id, DLQ_KEYS, args)

    def replay(self, item_id: str, update: UserUpdate) -> bool:
        """Move a dead-lettered item's update to the replay lane; False if the item is gone."""
        job_id = job_id_for(update, replay=int(time.time() * 1000))
        script_keys = [
            *DLQ_KEYS,
            keys.LEDGER,
            keys.outcome(update.source, update.event_id),
            keys.RQ_JOB_KEY_PREFIX + job_id,
            keys.rq_queue_key(keys.REPLAY),
            keys.RQ_QUEUES_SET,
            keys.pending(keys.REPLAY),
        ]
        args = [
            item_id,
            job_id,
            *self._jobs[keys.REPLAY].args(update, json.dumps(update.to_dict(), separators=(",", ":"))),
            time.time(),
            keys.pending_member(update.source, update.event_id),
        ]
        return bool(self._replay(keys=script_keys, args=args))

    def ledger(self) -> dict[str, int]:
        return ledger_from(self.redis.hgetall(keys.LEDGER))

    def dead_letters(self) -> list[dict[str, Any]]:
        return self.dlq().matching(DlqFilter())[0]
