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
#       customer_id, user_id (when both are given, the customer's user is learned),
#       then per destination (_AcceptJobFanOut.script_args): job_id, origin (its rq queue's name)
# Returns: 1 (accepted now) | 0 (a duplicate: counted as such in every ledger)
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
    redis.call('HSET', customer_map, customer_id, user_id)
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

# Count an event as dead-lettered and keep its item, together.
# KEYS: outcome_key, ledger, pending_live, pending_replay, dlq_items, dlq_index, dlq_reasons, dlq_dropped
# ARGV: outcome_ttl, member (of pending), dlq_id, item (its JSON), reason, now, max_items, cutoff
# Returns: {counted: 1 (counted now) | 0 (already counted: a re-run job),
#           accepted_at: when the event was accepted, as a string ('' when no longer pending)}
DEAD_LETTER_SCRIPT = (
    DLQ_LUA
    + _OUTCOME_LUA
    + """
local outcome_key = KEYS[1]
local ledger = KEYS[2]
local pending_live = KEYS[3]
local pending_replay = KEYS[4]
local dlq_items = KEYS[5]
local dlq_index = KEYS[6]
local dlq_reasons = KEYS[7]
local dlq_dropped = KEYS[8]
local outcome_ttl = ARGV[1]
local member = ARGV[2]
local dlq_id = ARGV[3]
local item = ARGV[4]
local reason = ARGV[5]
local now = ARGV[6]
local max_items = ARGV[7]
local cutoff = ARGV[8]

local pending_keys = {pending_live, pending_replay}
local result = count_outcome(outcome_key, ledger, 'dead_lettered', outcome_ttl, member, pending_keys)
if result[1] == 1 then
    -- kept only with its count: an event already settled (e.g. delivered, then its job failed
    -- inside rq) is not dead-lettered too, so the queue and the ledger never disagree
    dlq_keep({dlq_items, dlq_index, dlq_reasons, dlq_dropped}, dlq_id, item, reason, now, max_items, cutoff)
end
return result
"""
)

# Count the outcomes of one delivery (the update sent and those merged into it, or the updates
# found to carry nothing), end the user's lease, keep what the destination learned and release the
# delivery's rate-limit slots, in one step.
# KEYS: ledger, last_delivery, pending_live, pending_replay, lock, memory_key, limiter_in_flight,
#       then per event: outcome_key
# ARGV: outcome_ttl, now, token (of the lease; '' when no lease is held),
#       memory_change ('' to leave the memory, else 'set:<value>' or 'del'), memory_ttl,
#       slots (the call slots to release, space-separated tokens),
#       then per event: outcome, member (of pending)
# Returns: per event {counted: 1 (counted now) | 0 (already counted),
#                     accepted_at: when the event was accepted, as a string ('' when no longer pending)}
SETTLE_SCRIPT = (
    _OUTCOME_LUA
    + _GROUPS_LUA
    + """
local FIXED_KEYS, EVENT_KEYS = 7, 1
local FIXED_ARGS, EVENT_ARGS = 6, 2
local ledger = KEYS[1]
local last_delivery = KEYS[2]
local pending_live = KEYS[3]
local pending_replay = KEYS[4]
local lock = KEYS[5]
local memory_key = KEYS[6]
local limiter_in_flight = KEYS[7]
local outcome_ttl = ARGV[1]
local now = ARGV[2]
local token = ARGV[3]
local memory_change = ARGV[4]
local memory_ttl = ARGV[5]
local slots = ARGV[6]

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


@dataclass(frozen=True)
class _AcceptJobFanOut:
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
class _RejectFanOut:
    """One destination's groups in REJECT_SCRIPT: its KEYS (ledger, then the four of Keys.dlq), then its ARGV."""

    ledger: str
    dlq: list[str]  # dlq_items, dlq_index, dlq_reasons, dlq_dropped
    item: str

    def script_keys(self) -> list[str]:
        return [self.ledger, *self.dlq]

    def script_args(self) -> list[str]:
        return [self.item]


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
        self._accept_job_script = redis.register_script(live.lua(ACCEPT_JOB_SCRIPT))
        self._ignore_script = redis.register_script(IGNORE_SCRIPT)
        self._reject_script = redis.register_script(REJECT_SCRIPT)
        self._dead_letter_script = redis.register_script(DEAD_LETTER_SCRIPT)
        self._settle_script = redis.register_script(SETTLE_SCRIPT)
        self._replay_script = redis.register_script(replay.lua(REPLAY_SCRIPT))

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
        fan_out = []
        for dest in self.fan_out:
            job_id = job_id_for(update, destination=dest.destination)
            fan_out.append(
                _AcceptJobFanOut(
                    ledger=dest.ledger,
                    job_key=keys.RQ_JOB_KEY_PREFIX + job_id,
                    queue_key=dest.rq_queue_key(keys.LIVE),
                    pending=dest.pending(keys.LIVE),
                    parked=dest.parked(update.source, hint or "-"),
                    job_id=job_id,
                    origin=dest.queue_name(keys.LIVE),
                )
            )
        data, timestamp, description = self._jobs[keys.LIVE].args(update, update_json)
        return self._run_accept_job(
            dedup_key=keys.dedup(update.source, update.event_id),
            queues_set=keys.RQ_QUEUES_SET,
            customer_map=keys.customer_map(update.source),
            dedup_ttl=self.dedup_ttl,
            data=data,
            timestamp=timestamp,
            description=description,
            now=time.time(),
            member=keys.pending_member(update.source, update.event_id),
            event_id=update.event_id,
            parked_update=update_json if hint is not None else "",
            customer_id=update.customer_id or "",
            user_id=update.user_id or "",
            fan_out=fan_out,
        )

    def ignore(self, source: str, event_id: str) -> bool:
        return self._run_ignore(
            dedup_key=keys.dedup(source, event_id),
            ledgers=[dest.ledger for dest in self.fan_out],
            dedup_ttl=self.dedup_ttl,
        )

    def reject(self, item: DeadLetter, dedup_id: str) -> bool:
        """Keep an event that could not be accepted for delivery (e.g. invalid payload), in the
        dead-letter queue of every destination: replaying it there delivers it there."""
        max_items, cutoff = self.retention.args()
        return self._run_reject(
            dedup_key=keys.dedup(item.source, dedup_id),
            dedup_ttl=self.dedup_ttl,
            dlq_id=item.id,
            reason=item.reason,
            now=time.time(),
            max_items=max_items,
            cutoff=cutoff,
            fan_out=[
                _RejectFanOut(
                    ledger=dest.ledger, dlq=dest.dlq, item=replace(item, destination=dest.destination).to_json()
                )
                for dest in self.fan_out
            ],
        )

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
        answer = self._run_settle(
            ledger=self.keys.ledger,
            last_delivery=self.keys.last_delivery,
            pending_live=self.keys.pending(keys.LIVE),
            pending_replay=self.keys.pending(keys.REPLAY),
            lock=lock or self.keys.ledger,  # keys are passed either way; unused without a token or memory
            memory_key=memory_key or self.keys.ledger,
            limiter_in_flight=self.keys.limiter_in_flight,
            outcome_keys=[self.keys.outcome(u.source, u.event_id) for u, _ in outcomes],
            outcome_ttl=self.dedup_ttl,
            now=time.time(),
            token=token,
            memory_change="" if memory is None else (f"set:{value}" if value else "del"),
            memory_ttl=memory_ttl,
            slots=" ".join(slots or []),
            outcomes=[(outcome, keys.pending_member(u.source, u.event_id)) for u, outcome in outcomes],
        )
        return [Settled(bool(counted), float(accepted) if accepted else None) for counted, accepted in answer]

    def dead_letter(self, item: DeadLetter) -> Settled:
        item = replace(item, destination=self.keys.destination)
        event_id = item.event_id or item.id
        max_items, cutoff = self.retention.args()
        counted, accepted = self._run_dead_letter(
            outcome_key=self.keys.outcome(item.source, event_id),
            ledger=self.keys.ledger,
            pending_live=self.keys.pending(keys.LIVE),
            pending_replay=self.keys.pending(keys.REPLAY),
            dlq=self.keys.dlq,
            outcome_ttl=self.dedup_ttl,
            member=keys.pending_member(item.source, event_id),
            dlq_id=item.id,
            item=item.to_json(),
            reason=item.reason,
            now=time.time(),
            max_items=max_items,
            cutoff=cutoff,
        )
        return Settled(bool(counted), float(accepted) if accepted else None)

    def replay(self, item_id: str, update: UserUpdate) -> bool:
        """Move a dead-lettered item's update to the replay lane; False if the item is gone."""
        job_id = job_id_for(update, replay=int(time.time() * 1000), destination=self.keys.destination)
        update_json = json.dumps(update.to_dict(), separators=(",", ":"))
        data, timestamp, description = self._jobs[keys.REPLAY].args(update, update_json)
        return self._run_replay(
            dlq=self.keys.dlq,
            ledger=self.keys.ledger,
            outcome_key=self.keys.outcome(update.source, update.event_id),
            job_key=keys.RQ_JOB_KEY_PREFIX + job_id,
            queue_key=self.keys.rq_queue_key(keys.REPLAY),
            queues_set=keys.RQ_QUEUES_SET,
            pending=self.keys.pending(keys.REPLAY),
            dlq_id=item_id,
            job_id=job_id,
            origin=self.keys.queue_name(keys.REPLAY),
            data=data,
            timestamp=timestamp,
            description=description,
            now=time.time(),
            member=keys.pending_member(update.source, update.event_id),
        )

    def ledger(self) -> dict[str, int]:
        return ledger_from(self.redis.hgetall(self.keys.ledger))

    def dead_letters(self) -> list[dict[str, Any]]:
        return self.dlq().matching(DlqFilter())[0]

    # One wrapper per script, its parameters in the order of the script's header: KEYS, then ARGV.

    def _run_accept_job(
        self,
        *,
        dedup_key: str,
        queues_set: str,
        customer_map: str,
        dedup_ttl: int,
        data: str,
        timestamp: str,
        description: str,
        now: float,
        member: str,
        event_id: str,
        parked_update: str,
        customer_id: str,
        user_id: str,
        fan_out: list[_AcceptJobFanOut],
    ) -> bool:
        script_keys = [dedup_key, queues_set, customer_map, *(key for dest in fan_out for key in dest.script_keys())]
        args = [
            *(dedup_ttl, data, timestamp, description, now, member, event_id, parked_update, customer_id, user_id),
            *(arg for dest in fan_out for arg in dest.script_args()),
        ]
        return bool(self._accept_job_script(keys=script_keys, args=args))

    def _run_ignore(self, *, dedup_key: str, ledgers: list[str], dedup_ttl: int) -> bool:
        return bool(self._ignore_script(keys=[dedup_key, *ledgers], args=[dedup_ttl]))

    def _run_reject(
        self,
        *,
        dedup_key: str,
        dedup_ttl: int,
        dlq_id: str,
        reason: str,
        now: float,
        max_items: int,
        cutoff: float,
        fan_out: list[_RejectFanOut],
    ) -> bool:
        script_keys = [dedup_key, *(key for dest in fan_out for key in dest.script_keys())]
        args = [
            *(dedup_ttl, dlq_id, reason, now, max_items, cutoff),
            *(arg for dest in fan_out for arg in dest.script_args()),
        ]
        return bool(self._reject_script(keys=script_keys, args=args))

    def _run_dead_letter(
        self,
        *,
        outcome_key: str,
        ledger: str,
        pending_live: str,
        pending_replay: str,
        dlq: list[str],  # dlq_items, dlq_index, dlq_reasons, dlq_dropped
        outcome_ttl: int,
        member: str,
        dlq_id: str,
        item: str,
        reason: str,
        now: float,
        max_items: int,
        cutoff: float,
    ) -> list[Any]:
        return self._dead_letter_script(
            keys=[outcome_key, ledger, pending_live, pending_replay, *dlq],
            args=[outcome_ttl, member, dlq_id, item, reason, now, max_items, cutoff],
        )

    def _run_settle(
        self,
        *,
        ledger: str,
        last_delivery: str,
        pending_live: str,
        pending_replay: str,
        lock: str,
        memory_key: str,
        limiter_in_flight: str,
        outcome_keys: list[str],  # per event
        outcome_ttl: int,
        now: float,
        token: str,
        memory_change: str,
        memory_ttl: int,
        slots: str,
        outcomes: list[tuple[str, str]],  # per event: outcome, member
    ) -> list[Any]:
        return self._settle_script(
            keys=[
                ledger,
                last_delivery,
                pending_live,
                pending_replay,
                lock,
                memory_key,
                limiter_in_flight,
                *outcome_keys,
            ],
            args=[
                *(outcome_ttl, now, token, memory_change, memory_ttl, slots),
                *(arg for outcome_and_member in outcomes for arg in outcome_and_member),
            ],
        )

    def _run_replay(
        self,
        *,
        dlq: list[str],  # dlq_items, dlq_index, dlq_reasons, dlq_dropped
        ledger: str,
        outcome_key: str,
        job_key: str,
        queue_key: str,
        queues_set: str,
        pending: str,
        dlq_id: str,
        job_id: str,
        origin: str,
        data: str,
        timestamp: str,
        description: str,
        now: float,
        member: str,
    ) -> bool:
        return bool(
            self._replay_script(
                keys=[*dlq, ledger, outcome_key, job_key, queue_key, queues_set, pending],
                args=[dlq_id, job_id, origin, data, timestamp, description, now, member],
            )
        )
