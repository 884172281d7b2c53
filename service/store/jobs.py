"""Delivery jobs in rq's own format: ids, options, and the cheap hash writer intake uses."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import Any

from redis import Redis
from rq import Retry
from rq.callbacks import Callback
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat

from service.core.update import EVENT_ID, UserUpdate
from service.store import keys

# service reaches worker code by dotted name only
DELIVER_FUNC = "workers.delivery.job.deliver"
ON_FAILURE_FUNC = "workers.delivery.job.on_job_failure"
# Jobs queued before the layout moved name the old module, which stays importable (workers/deliver.py).
LEGACY_DELIVER_FUNC = "workers.deliver.deliver"
DELIVER_FUNCS = frozenset({DELIVER_FUNC, LEGACY_DELIVER_FUNC})
# One job is one user's delivery: at most three User.com calls (3 s connect + 10 s read each) per
# part sent, a few limiter sleeps and a lease wait; taking more jobs stops after 5 s (batch.py).
# rq kills a job that runs longer.
DELIVERY_JOB_TIMEOUT = 60
# A call is made only while its connect + read timeouts fit in what is left of its job, less this (counting
# the outcomes): else rq could kill the job mid-call and run it again, sending the same update again.
JOB_END_SECONDS = 5
# What a call's connect + read timeouts may add up to (the settings refuse more): a job can still make calls.
MAX_CALL_SECONDS = 30.0
# A job whose worker died (SIGKILL, OOM, node loss) is found by rq's maintenance and run again
# this many times (at-least-once; deliveries are idempotent). Exceptions the job does not handle
# itself (bugs) take the same path, then end in the dead-letter queue as internal_error.
RERUNS = 3
FAILED_JOB_TTL = 14 * 24 * 3600  # rq keeps jobs that crashed unexpectedly this long
# An event id is kept as it is in its job id when that cannot be mistaken for another: rq's
# characters only, starting with a letter or digit, and, if it has a `-`, its last `-` part
# starting with a digit (Stripe, Paddle, Lemon Squeezy and most Standard Webhooks ids), because
# the suffixes after it (-<destination>, -replay<N>, -a<N>, -t<hex>) all start with a letter.
# Any other id is written escaped: `_` first, then `_u` `_h` `_d` `_c` for `_` `-` `.` `:` —
# reversible, with no `-`, and never equal to a kept id (those never start with `_`).
# Ids of jobs already queued stay as they were (the worker builds a retry's id from the id in hand).
KEPT_EVENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*\Z")
ESCAPES = {"_": "_u", "-": "_h", ".": "_d", ":": "_c"}


def job_event_id(event_id: str) -> str:
    """The event id as written in job ids: collision-free and within rq's [A-Za-z0-9_-]."""
    if KEPT_EVENT_ID.match(event_id) and ("-" not in event_id or event_id.rsplit("-", 1)[1][:1].isdigit()):
        return event_id
    if not EVENT_ID.match(event_id):
        raise ValueError("event id outside [A-Za-z0-9_.:-]{1,255}")  # intake refuses such ids first
    return "_" + "".join(ESCAPES.get(char, char) for char in event_id)


def job_id_for(update: UserUpdate, attempt: int = 1, *, destination: str, replay: int | None = None) -> str:
    base = f"{update.source}-{job_event_id(update.event_id)}"
    if destination != keys.UNPREFIXED_DESTINATION:
        base = f"{base}-{destination}"
    if replay is not None:
        base = f"{base}-replay{replay}"
    return base if attempt == 1 else f"{base}-a{attempt}"


def user_job_id(source: str, hint: str, destination: str) -> str:
    """A user's delivery job: `<source>-u<digest of the hint>[-<destination>]-j<random>`. Never equal to an
    event's job id (a kept event id's last `-` part starts with a digit; an escaped one starts with `_`),
    and unique per job, since a user is queued again as soon as its pending state is taken."""
    digest = hashlib.blake2b(hint.encode(), digest_size=6).hexdigest()
    base = f"{source}-u{digest}"
    if destination != keys.UNPREFIXED_DESTINATION:
        base = f"{base}-{destination}"
    return f"{base}-j{uuid.uuid4().hex[:12]}"


def user_call_args(source: str, hint: str, attempt: int, first_failure_at: float | None, lane: str) -> list[Any]:
    """A user's delivery job's arguments: the user's reference (keys.user_ref; the state keeps the source
    and hint), then attempt, first failure and lane unless they are the defaults (1, None, live) — so the
    serialized call of a job queued by intake stays within 64 bytes and Redis keeps the job's hash compact
    (listpack, ~0.4 KB instead of ~2 KB). An event's job from before the upgrade carried the whole update."""
    ref = keys.user_ref(source, hint)
    return (
        [ref] if (attempt, first_failure_at, lane) == (1, None, keys.LIVE) else [ref, attempt, first_failure_at, lane]
    )


def _job_options(lane: str, destination_keys: keys.Keys) -> dict[str, Any]:
    return {
        "origin": destination_keys.queue_name(lane),
        "timeout": DELIVERY_JOB_TIMEOUT,
        "result_ttl": 0,
        "failure_ttl": FAILED_JOB_TTL,
        "on_failure": Callback(ON_FAILURE_FUNC),
        "retry": Retry(max=RERUNS),
    }


def delivery_job(
    redis: Redis,
    source: str,
    hint: str,
    attempt: int = 1,
    first_failure_at: float | None = None,
    *,
    lane: str = keys.LIVE,
    job_id: str,
    destination_keys: keys.Keys,
) -> Job:
    """The rq job for one attempt at delivering what is pending for a user."""
    return Job.create(
        DELIVER_FUNC,
        args=user_call_args(source, hint, attempt, first_failure_at, lane),
        connection=redis,
        serializer=JSONSerializer,
        id=job_id,
        description=f"deliver {source} user",
        **_job_options(lane, destination_keys),
    )


class JobWriter:
    """Builds the hash of a queued delivery job, field for field what rq's `Job.to_dict()` gives.

    The fields that are the same for every delivery job of a lane are taken once from rq
    itself; per job only the id, the payload (`data`: the serialized call, as `Job.data`) and
    the timestamps change (and `origin`, the queue, which is per destination). That costs a few
    microseconds instead of `Job.create()`'s ~60.
    tests/integration/test_store.py checks the result against rq's own, field by field.
    """

    PER_JOB = ("data", "created_at", "enqueued_at", "description", "origin")

    def __init__(self, redis: Redis, lane: str) -> None:
        self.lane = lane
        template = Job.create(
            DELIVER_FUNC,
            args=(),
            connection=redis,
            serializer=JSONSerializer,
            id="template",
            **_job_options(lane, keys.USERCOM),  # origin is per job
        )
        fields = template.to_dict()
        fields["status"] = JobStatus.QUEUED.value
        self.constant = {k: v for k, v in fields.items() if k not in self.PER_JOB and v is not None}

    def lua(self, script: str) -> str:
        job_fields = ", ".join(_lua_string(x) for k, v in self.constant.items() for x in (k, v))
        return script % {"job_fields": job_fields}

    def user_args(self, source: str, hint: str) -> list[Any]:
        """data, timestamp, description for the scripts' push_job: a job delivering what is pending for
        the user. `data` is the serialized call as JSONSerializer.dumps((func, None, args, kwargs)) writes
        it, left uncompressed (rq reads it as is: Job.restore falls back when zlib does not apply)."""
        call = [DELIVER_FUNC, None, user_call_args(source, hint, 1, None, self.lane), {}]
        return [json.dumps(call, separators=(",", ":")), utcformat(now()), f"deliver {source} user"]


def _lua_string(value: Any) -> str:
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'
