"""Durable writes to Redis: accepting events, counting outcomes, dead-lettering.

Every write that changes the ledger is one Lua script, so the ledger and what it counts
change together or not at all: received = delivered + coalesced + ignored + dead_lettered
+ in flight holds at every instant.

Accepting an event writes an rq job hash and pushes its id in the same script, the way rq's
own unique-enqueue script does (rq.scripts.save_unique_job); the fields come from rq's
`Job.to_dict()`, so workers read them as any rq job. One round trip instead of rq's several
keeps the webhook endpoint near the cost of a bare RPUSH.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from redis import Redis
from rq.callbacks import Callback
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat

from service import keys
from service.updates import UserUpdate

# service reaches worker code by dotted name only
DELIVER_FUNC = "workers.deliver.deliver"
ON_FAILURE_FUNC = "workers.deliver.on_job_failure"
DELIVERY_JOB_TIMEOUT = 120  # seconds; one job is at most three User.com calls with their timeouts
FAILED_JOB_TTL = 14 * 24 * 3600  # rq keeps jobs that crashed unexpectedly this long
JOB_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")

# Shared Lua: count an outcome once per event, and keep a dead-letter item.
# (outcome_key, ledger_key, outcome, ttl) -> 1 if counted now, 0 if already counted
_LUA_HELPERS = """
local function count_outcome(outcome_key, ledger_key, outcome, ttl)
    if redis.call('SET', outcome_key, outcome, 'NX', 'EX', ttl) then
        redis.call('HINCRBY', ledger_key, outcome, 1)
        return 1
    end
    return 0
end
local function keep_dead_letter(items_key, index_key, id, item, score)
    redis.call('HSET', items_key, id, item)
    redis.call('ZADD', index_key, score, id)
end
"""

# The dedup key makes everything after it happen once per event id.
# KEYS: dedup, ledger, then per mode:
#   job:         job_key, queue_key, queues_set   ARGV[3]=job_id, ARGV[4]=data, ARGV[5]=timestamp,
#                                                 ARGV[6]=description; the other job fields are JOB_FIELDS
#   ignore:      (none)
#   dead_letter: dlq_items, dlq_index             ARGV[3]=dlq_id, ARGV[4]=item JSON, ARGV[5]=score
# ARGV: dedup_ttl, mode
# Returns 1 when accepted now, 0 for a duplicate.
# JOB_FIELDS is filled in by JobWriter: the fields every delivery job shares, taken from rq.
ACCEPT_SCRIPT = (
    _LUA_HELPERS
    + """
local JOB_FIELDS = {%(job_fields)s}
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
    redis.call('HINCRBY', KEYS[2], 'duplicates', 1)
    return 0
end
redis.call('HINCRBY', KEYS[2], 'received', 1)
local mode = ARGV[2]
if mode == 'job' then
    redis.call('HSET', KEYS[3], 'data', ARGV[4], 'created_at', ARGV[5], 'enqueued_at', ARGV[5],
               'description', ARGV[6], unpack(JOB_FIELDS))
    redis.call('RPUSH', KEYS[4], ARGV[3])
    redis.call('SADD', KEYS[5], KEYS[4])
elseif mode == 'ignore' then
    redis.call('HINCRBY', KEYS[2], 'ignored', 1)
elseif mode == 'dead_letter' then
    redis.call('HINCRBY', KEYS[2], 'dead_lettered', 1)
    keep_dead_letter(KEYS[3], KEYS[4], ARGV[3], ARGV[4], ARGV[5])
else
    return redis.error_reply('unknown mode ' .. mode)
end
return 1
"""
)

# KEYS: outcome_key, ledger, [dlq_items, dlq_index]
# ARGV: outcome ('delivered' | 'dead_lettered'), outcome_ttl, [dlq_id, item JSON, score]
# Returns 1 when counted now, 0 when this event's outcome was already counted (a re-run job).
RECORD_OUTCOME_SCRIPT = (
    _LUA_HELPERS
    + """
local counted = count_outcome(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
if ARGV[1] == 'dead_lettered' then
    keep_dead_letter(KEYS[3], KEYS[4], ARGV[3], ARGV[4], ARGV[5])
end
return counted
"""
)

LEDGER_FIELDS = ("received", "delivered", "coalesced", "ignored", "dead_lettered")


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered item: enough to understand the failure and replay it."""

    id: str
    reason: str  # invalid_payload, usercom_rejected, retries_exhausted, unresolved_identity, ...
    source: str
    event_type: str | None
    event_id: str | None
    event_time: int | None
    message: str
    update: dict[str, Any] | None = None
    event: Any = None  # the original payload, when it could not be normalized
    user_id: str | None = None
    attempts: int = 0
    first_failure_at: float | None = None
    last_failure_at: float | None = None
    last_status: int | None = None
    last_response: str | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"), default=str)


def job_id_for(update: UserUpdate, attempt: int = 1) -> str:
    base = JOB_ID_UNSAFE.sub("_", f"{update.source}-{update.event_id}")
    return base if attempt == 1 else f"{base}-a{attempt}"


_JOB_OPTIONS: dict[str, Any] = {
    "origin": keys.DELIVERY_QUEUE,
    "timeout": DELIVERY_JOB_TIMEOUT,
    "result_ttl": 0,
    "failure_ttl": FAILED_JOB_TTL,
    "on_failure": Callback(ON_FAILURE_FUNC),
}


def _description(update: UserUpdate) -> str:
    return f"deliver {update.source} {update.event_type} {update.event_id}"


def delivery_job(redis: Redis, update: UserUpdate, attempt: int = 1, first_failure_at: float | None = None) -> Job:
    """The rq job for one delivery attempt; its id is stable per (event, attempt)."""
    return Job.create(
        DELIVER_FUNC,
        args=(update.to_dict(), attempt, first_failure_at),
        connection=redis,
        serializer=JSONSerializer,
        id=job_id_for(update, attempt),
        description=_description(update),
        **_JOB_OPTIONS,
    )


class JobWriter:
    """Builds the hash of a queued delivery job, field for field what rq's `Job.to_dict()` gives.

    The fields that are the same for every delivery job are taken once from rq itself; per
    job only the id, the payload (`data`: the serialized call, as `Job.data`) and the
    timestamps change. That costs a few microseconds instead of `Job.create()`'s ~60.
    tests/integration/test_store.py checks the result against rq's own, field by field.
    """

    PER_JOB = ("data", "created_at", "enqueued_at", "description")

    def __init__(self, redis: Redis) -> None:
        template = Job.create(
            DELIVER_FUNC, args=(), connection=redis, serializer=JSONSerializer, id="template", **_JOB_OPTIONS
        )
        fields = template.to_dict()
        fields["status"] = JobStatus.QUEUED.value
        self.constant = {k: v for k, v in fields.items() if k not in self.PER_JOB and v is not None}

    def lua_fields(self) -> str:
        return ", ".join(_lua_string(x) for k, v in self.constant.items() for x in (k, v))

    def args(self, update: UserUpdate) -> list[Any]:
        """ARGV[4..6] of ACCEPT_SCRIPT: data, timestamp, description.

        `data` is left uncompressed: rq reads it as is (Job.restore falls back when zlib does not
        apply), and compressing would cost ~20 us per webhook to save a kilobyte of Redis memory.
        """
        call = (DELIVER_FUNC, None, (update.to_dict(), 1, None), {})
        return [JSONSerializer.dumps(call), utcformat(now()), _description(update)]


def _lua_string(value: Any) -> str:
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


class Store:
    def __init__(self, redis: Redis, *, dedup_ttl: int) -> None:
        self.redis = redis
        self.dedup_ttl = dedup_ttl
        self._jobs = JobWriter(redis)
        self._accept = redis.register_script(ACCEPT_SCRIPT % {"job_fields": self._jobs.lua_fields()})
        self._record = redis.register_script(RECORD_OUTCOME_SCRIPT)

    def accept(self, update: UserUpdate) -> bool:
        """Queue the update for delivery; False if this event id was accepted before."""
        job_id = job_id_for(update)
        job_keys = [keys.RQ_JOB_KEY_PREFIX + job_id, keys.RQ_QUEUE_KEY, keys.RQ_QUEUES_SET]
        return self._run(update.source, update.event_id, "job", job_keys, [job_id, *self._jobs.args(update)])

    def ignore(self, source: str, event_id: str) -> bool:
        return self._run(source, event_id, "ignore", [], [])

    def reject(self, item: DeadLetter, dedup_id: str) -> bool:
        """Keep an event that could not be accepted for delivery (e.g. invalid payload)."""
        dlq_keys = [keys.DLQ_ITEMS, keys.DLQ_INDEX]
        return self._run(item.source, dedup_id, "dead_letter", dlq_keys, [item.id, item.to_json(), time.time()])

    def _run(self, source: str, event_id: str, mode: str, extra_keys: list[str], extra_args: list[Any]) -> bool:
        script_keys = [keys.dedup(source, event_id), keys.LEDGER, *extra_keys]
        args = [self.dedup_ttl, mode, *extra_args]
        return bool(self._accept(keys=script_keys, args=args))

    def record_delivered(self, update: UserUpdate) -> bool:
        outcome_key = keys.outcome(update.source, update.event_id)
        return bool(self._record(keys=[outcome_key, keys.LEDGER], args=["delivered", self.dedup_ttl]))

    def dead_letter(self, item: DeadLetter) -> bool:
        outcome_key = keys.outcome(item.source, item.event_id or item.id)
        script_keys = [outcome_key, keys.LEDGER, keys.DLQ_ITEMS, keys.DLQ_INDEX]
        args = ["dead_lettered", self.dedup_ttl, item.id, item.to_json(), time.time()]
        return bool(self._record(keys=script_keys, args=args))

    def ledger(self) -> dict[str, int]:
        raw = self.redis.hgetall(keys.LEDGER)
        counts = {name.decode(): int(value) for name, value in raw.items()}
        ledger = {name: counts.get(name, 0) for name in LEDGER_FIELDS}
        settled = sum(ledger[name] for name in LEDGER_FIELDS if name != "received")
        ledger["in_flight"] = ledger["received"] - settled
        ledger["duplicates"] = counts.get("duplicates", 0)
        return ledger

    def dead_letters(self) -> list[dict[str, Any]]:
        ids = self.redis.zrange(keys.DLQ_INDEX, 0, -1)
        raw = self.redis.hmget(keys.DLQ_ITEMS, ids) if ids else []
        return [json.loads(item) for item in raw if item is not None]
