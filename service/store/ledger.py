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
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from redis import Redis

from service.core.dead_letter import DeadLetter, DlqFilter
from service.core.update import UserUpdate
from service.store import keys
from service.store.dlq import DLQ_LUA, DeadLetterQueue, Retention
from service.store.jobs import JobWriter, job_id_for

if TYPE_CHECKING:
    from service.config import Settings

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

# The dedup key makes everything after it happen once per event id; then the event goes to each
# destination (fan-out), counted in each destination's ledger.
# KEYS[1]=dedup, KEYS[2]=rq queues set, then per destination a group of keys; ARGV[1]=dedup_ttl,
# ARGV[2]=mode, ARGV[3]=number of destinations, then per mode:
#   job:         keys: ledger, job_key, queue_key, pending_live, parked
#                ARGV[4]=data, [5]=timestamp, [6]=description, [7]=now, [8]=member, [9]=event id,
#                [10]=update JSON to park ('' when intake cannot tell who it is for),
#                then per destination: job_id, origin; then customer id, user id: when both are
#                given, the customer's user is learned (last key: the source's customer map)
#   ignore:      keys: ledger
#   dead_letter: keys: ledger, the four DLQ keys
#                ARGV[4]=dlq_id, [5]=reason, [6]=now, [7]=max items, [8]=cutoff, then per destination item JSON
# Returns 1 when accepted now, 0 for a duplicate.
ACCEPT_SCRIPT = (
    DLQ_LUA
    + _JOB_LUA
    + """
local mode, n = ARGV[2], tonumber(ARGV[3])
local size = ({job = 5, ignore = 1, dead_letter = 5})[mode]
if not size then return redis.error_reply('unknown mode ' .. mode) end
local first_seen = redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1])
for d = 0, n - 1 do
    local k = 2 + d * size
    local ledger = KEYS[k + 1]
    if not first_seen then
        redis.call('HINCRBY', ledger, 'duplicates', 1)
    else
        redis.call('HINCRBY', ledger, 'received', 1)
        if mode == 'job' then
            push_job(KEYS[k + 2], KEYS[k + 3], KEYS[2], ARGV[11 + 2 * d], ARGV[12 + 2 * d], ARGV[4], ARGV[5], ARGV[6])
            redis.call('ZADD', KEYS[k + 4], ARGV[7], ARGV[8])
            if ARGV[10] ~= '' then redis.call('HSET', KEYS[k + 5], ARGV[9], ARGV[10]) end
        elseif mode == 'ignore' then
            redis.call('HINCRBY', ledger, 'ignored', 1)
        else
            redis.call('HINCRBY', ledger, 'dead_lettered', 1)
            dlq_keep({KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5]}, ARGV[4], ARGV[9 + d], ARGV[5], ARGV[6],
                     ARGV[7], ARGV[8])
        end
    end
end
local learn = 11 + 2 * n
if first_seen and mode == 'job' and ARGV[learn] ~= '' and ARGV[learn + 1] ~= '' then
    redis.call('HSET', KEYS[3 + n * size], ARGV[learn], ARGV[learn + 1])
end
return first_seen and 1 or 0
"""
)

# Count an event as dead-lettered and keep its item, together.
# KEYS: outcome_key, ledger, pending_live, pending_replay, the four DLQ keys
# ARGV: outcome_ttl, member, dlq_id, item JSON, reason, now, max items, cutoff
# Returns {1 when counted now, 0 when already counted (a re-run job); time accepted, as a string}.
DEAD_LETTER_SCRIPT = (
    DLQ_LUA
    + _OUTCOME_LUA
    + """
local result = count_outcome(KEYS[1], KEYS[2], 'dead_lettered', ARGV[1], ARGV[2], {KEYS[3], KEYS[4]})
if result[1] == 1 then
    -- kept only with its count: an event already settled (e.g. delivered, then its job failed
    -- inside rq) is not dead-lettered too, so the queue and the ledger never disagree
    dlq_keep({KEYS[5], KEYS[6], KEYS[7], KEYS[8]}, ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
end
return result
"""
)

# Count the outcomes of one delivery (the update sent and those merged into it, or the updates
# found to carry nothing), end the user's lease, keep what the destination learned and release the
# delivery's rate-limit slots, in one step.
# KEYS: ledger, last_delivery, pending_live, pending_replay, lock, memory, limiter_in_flight, then
#       each event's outcome key
# ARGV: outcome_ttl, now, lease token ('' when no lease is held), memory ('' to leave it, else
#       'set:<value>' or 'del'), memory_ttl, call slots to release (space-separated tokens), then
#       per event: outcome, member
# Returns per event {1 when counted now, 0 when already counted; time accepted, as a string}.
SETTLE_SCRIPT = (
    _OUTCOME_LUA
    + """
for token in string.gmatch(ARGV[6], '%S+') do redis.call('ZREM', KEYS[7], token) end
local result = {}
for i = 8, #KEYS do
    local outcome, member = ARGV[2 * i - 9], ARGV[2 * i - 8]
    table.insert(result, count_outcome(KEYS[i], KEYS[1], outcome, ARGV[1], member, {KEYS[3], KEYS[4]}))
    if outcome == 'delivered' then redis.call('SET', KEYS[2], ARGV[2]) end
end
if ARGV[3] ~= '' and redis.call('GET', KEYS[5]) == ARGV[3] then redis.call('DEL', KEYS[5]) end
if ARGV[4] == 'del' then
    redis.call('DEL', KEYS[6])
elseif ARGV[4] ~= '' then
    redis.call('SET', KEYS[6], string.sub(ARGV[4], 5), 'EX', ARGV[5])
end
return result
"""
)


# Take an item out of the dead-letter queue and queue its update on the replay lane: the event
# goes back to "in flight" (dead_lettered - 1) and its next outcome is counted afresh.
# KEYS: the four DLQ keys, ledger, outcome_key, job_key, replay_queue_key, queues_set, pending_replay
# ARGV: dlq_id, job_id, origin, data, timestamp, description, now, member
# Returns 0 when the item is gone (deleted or replayed meanwhile).
REPLAY_SCRIPT = (
    DLQ_LUA
    + _JOB_LUA
    + """
if not dlq_remove({KEYS[1], KEYS[2], KEYS[3], KEYS[4]}, ARGV[1]) then return 0 end
redis.call('HINCRBY', KEYS[5], 'dead_lettered', -1)
redis.call('HINCRBY', KEYS[5], 'replayed', 1)
redis.call('DEL', KEYS[6])
push_job(KEYS[7], KEYS[8], KEYS[9], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
redis.call('ZADD', KEYS[10], ARGV[7], ARGV[8])
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
    """Intake, outcomes and replays: every write that moves an event through a ledger.

    Intake fans each event out to every destination in `fan_out`; outcomes, the dead-letter
    queue and replays belong to one destination (`keys`)."""

    def __init__(
        self,
        redis: Redis,
        *,
        dedup_ttl: int,
        retention: Retention,
        destination_keys: keys.Keys,
        fan_out: tuple[keys.Keys, ...],
    ) -> None:
        self.redis = redis
        self.dedup_ttl = dedup_ttl
        self.retention = retention
        self.keys = destination_keys
        self.fan_out = fan_out
        live, replay = JobWriter(redis, keys.LIVE), JobWriter(redis, keys.REPLAY)
        self._jobs = {keys.LIVE: live, keys.REPLAY: replay}
        self._accept = redis.register_script(live.lua(ACCEPT_SCRIPT))
        self._dead_letter = redis.register_script(DEAD_LETTER_SCRIPT)
        self._settle = redis.register_script(SETTLE_SCRIPT)
        self._replay = redis.register_script(replay.lua(REPLAY_SCRIPT))

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings, destination: str | None = None) -> Store:
        """A store fanning out to the configured destinations; outcomes for `destination` (default:
        the first one configured)."""
        retention = Retention(max_items=settings.dlq_max_items, ttl_seconds=settings.dlq_ttl_days * 24 * 3600)
        fan_out = tuple(keys.Keys(name) for name in settings.destinations)
        own = keys.Keys(destination) if destination else fan_out[0]
        return cls(
            redis, dedup_ttl=settings.dedup_ttl_seconds, retention=retention, destination_keys=own, fan_out=fan_out
        )

    def for_destination(self, destination: str) -> Store:
        return Store(
            self.redis,
            dedup_ttl=self.dedup_ttl,
            retention=self.retention,
            destination_keys=keys.Keys(destination),
            fan_out=self.fan_out,
        )

    def dlq(self) -> DeadLetterQueue:
        return DeadLetterQueue(self.redis, self.retention, self.keys)

    def accept(self, update: UserUpdate) -> bool:
        """Queue the update for delivery to every destination; False if this event id was accepted before."""
        update_json = json.dumps(update.to_dict(), separators=(",", ":"))
        # Parked at once, so that a backlog for one user goes out as one merged update.
        hint = update.hint
        group: list[str] = []
        per_destination: list[Any] = []
        for dest in self.fan_out:
            job_id = job_id_for(update, destination=dest.destination)
            group += [
                dest.ledger,
                keys.RQ_JOB_KEY_PREFIX + job_id,
                dest.rq_queue_key(keys.LIVE),
                dest.pending(keys.LIVE),
                dest.parked(update.source, hint or "-"),
            ]
            per_destination += [job_id, dest.queue_name(keys.LIVE)]
        args = [
            *self._jobs[keys.LIVE].args(update, update_json),
            time.time(),
            keys.pending_member(update.source, update.event_id),
            update.event_id,
            update_json if hint is not None else "",
            *per_destination,
            update.customer_id or "",
            update.user_id or "",
        ]
        group.append(keys.customer_map(update.source))
        return self._run(update.source, update.event_id, "job", group, args)

    def ignore(self, source: str, event_id: str) -> bool:
        return self._run(source, event_id, "ignore", [dest.ledger for dest in self.fan_out], [])

    def reject(self, item: DeadLetter, dedup_id: str) -> bool:
        """Keep an event that could not be accepted for delivery (e.g. invalid payload), in the
        dead-letter queue of every destination: replaying it there delivers it there."""
        group = [key for dest in self.fan_out for key in (dest.ledger, *dest.dlq)]
        items = [replace(item, destination=dest.destination).to_json() for dest in self.fan_out]
        args = [item.id, item.reason, time.time(), *self.retention.args(), *items]
        return self._run(item.source, dedup_id, "dead_letter", group, args)

    def _run(self, source: str, event_id: str, mode: str, group: list[str], extra_args: list[Any]) -> bool:
        script_keys = [keys.dedup(source, event_id), keys.RQ_QUEUES_SET, *group]
        args = [self.dedup_ttl, mode, len(self.fan_out), *extra_args]
        return bool(self._accept(keys=script_keys, args=args))

    def settle(
        self,
        outcomes: list[tuple[UserUpdate, str]],
        lease: tuple[str, str] | None = None,
        memory: tuple[str, str, int] | None = None,
        slots: list[str] | None = None,
    ) -> list[Settled]:
        """Count each update's outcome ('delivered'; 'coalesced': merged into a delivered update or
        superseded by newer values; 'ignored': nothing in it for the destination), end the lease
        (lock key, token), keep what the destination learned (key, value ('' to forget), ttl) and
        release the delivery's call slots (RateLimiter.released_later), if given, in one step."""
        lock, token = lease or ("", "")
        memory_key, value, memory_ttl = memory or ("", "", 0)
        script_keys = [
            self.keys.ledger,
            self.keys.last_delivery,
            self.keys.pending(keys.LIVE),
            self.keys.pending(keys.REPLAY),
            lock or self.keys.ledger,  # keys are passed either way; unused without a token or memory
            memory_key or self.keys.ledger,
            self.keys.limiter_in_flight,
            *(self.keys.outcome(u.source, u.event_id) for u, _ in outcomes),
        ]
        change = "" if memory is None else (f"set:{value}" if value else "del")
        args: list[Any] = [self.dedup_ttl, time.time(), token, change, memory_ttl, " ".join(slots or [])]
        for update, outcome in outcomes:
            args += [outcome, keys.pending_member(update.source, update.event_id)]
        answer = self._settle(keys=script_keys, args=args)
        return [Settled(bool(counted), float(accepted) if accepted else None) for counted, accepted in answer]

    def dead_letter(self, item: DeadLetter) -> Settled:
        item = replace(item, destination=self.keys.destination)
        event_id = item.event_id or item.id
        script_keys = [
            self.keys.outcome(item.source, event_id),
            self.keys.ledger,
            self.keys.pending(keys.LIVE),
            self.keys.pending(keys.REPLAY),
            *self.keys.dlq,
        ]
        member = keys.pending_member(item.source, event_id)
        args = [self.dedup_ttl, member, item.id, item.to_json(), item.reason, time.time(), *self.retention.args()]
        counted, accepted = self._dead_letter(keys=script_keys, args=args)
        return Settled(bool(counted), float(accepted) if accepted else None)

    def replay(self, item_id: str, update: UserUpdate) -> bool:
        """Move a dead-lettered item's update to the replay lane; False if the item is gone."""
        job_id = job_id_for(update, replay=int(time.time() * 1000), destination=self.keys.destination)
        script_keys = [
            *self.keys.dlq,
            self.keys.ledger,
            self.keys.outcome(update.source, update.event_id),
            keys.RQ_JOB_KEY_PREFIX + job_id,
            self.keys.rq_queue_key(keys.REPLAY),
            keys.RQ_QUEUES_SET,
            self.keys.pending(keys.REPLAY),
        ]
        args = [
            item_id,
            job_id,
            self.keys.queue_name(keys.REPLAY),
            *self._jobs[keys.REPLAY].args(update, json.dumps(update.to_dict(), separators=(",", ":"))),
            time.time(),
            keys.pending_member(update.source, update.event_id),
        ]
        return bool(self._replay(keys=script_keys, args=args))

    def ledger(self) -> dict[str, int]:
        return ledger_from(self.redis.hgetall(self.keys.ledger))

    def dead_letters(self) -> list[dict[str, Any]]:
        return self.dlq().matching(DlqFilter())[0]
