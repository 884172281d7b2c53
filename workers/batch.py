"""More than one delivery per rq job: a running delivery job takes further jobs queued behind it
and runs them itself, so rq's own bookkeeping (~4 ms a job here, twice the delivery itself) is
paid once per batch instead of once per event.

Taken jobs are moved atomically (LMOVE) from the queue into a list kept under the taking job's
id, and removed from it only once handled, so nothing is lost if the worker dies meanwhile:
rq runs the taking job again (at-least-once), and it first handles what its list still holds;
after its last run the list goes back to the queue (`return_taken`), as it does when the
re-queued taking job is itself taken by another one. A taken job that raises is
put back on the queue for rq to run as usual. Deliveries are idempotent and counted once per
event, so handling a job twice changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import zlib
from collections.abc import Callable
from typing import Any

from redis import Redis

from service import keys
from service.jobs import DELIVER_FUNC

log = logging.getLogger(__name__)
BATCH_MAX_JOBS = 50
# Stop taking more once the job has run this long, so it ends within its timeout (60 s) even
# when the delivery in hand takes every timeout of its calls.
BATCH_SECONDS = 5.0


def batch_key(destination_keys: keys.Keys, job_id: str) -> str:
    return f"{destination_keys.prefix}:batch:{job_id}"


def run_batch(
    redis: Redis,
    destination_keys: keys.Keys,
    lane: str,
    carrier_id: str,
    run: Callable[[str, list[Any]], str],
    *,
    started: float,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Handle what a previous run of `carrier_id` left, then take queued jobs; returns how many ran.
    `run(job_id, args)` delivers one job's update (the job's rq arguments) and says its outcome;
    `started` is when the taking job began (clock time).
    Taking stops at a job that is throttled: the ones behind it would be too."""
    queue_key = destination_keys.rq_queue_key(lane)
    taken_key = batch_key(destination_keys, carrier_id)
    done = 0
    outcome: str | None = None
    for raw in redis.lrange(taken_key, 0, -1):
        outcome = _run_one(redis, destination_keys, queue_key, taken_key, raw.decode(), run)
        if outcome is None:
            return done
        done += 1
    deadline = started + BATCH_SECONDS  # counted from the start of the taking job itself
    while done < BATCH_MAX_JOBS and clock() < deadline and outcome != "throttled":
        raw = redis.lmove(queue_key, taken_key, "LEFT", "RIGHT")
        if raw is None:
            break
        outcome = _run_one(redis, destination_keys, queue_key, taken_key, raw.decode(), run)
        if outcome is None:
            break
        done += 1
    return done


def _run_one(
    redis: Redis,
    destination_keys: keys.Keys,
    queue_key: str,
    taken_key: str,
    job_id: str,
    run: Callable[[str, list[Any]], str],
) -> str | None:
    """The job's outcome, or None when it went back to the queue instead."""
    job_key = keys.RQ_JOB_KEY_PREFIX + job_id
    call = _call_of(redis.hget(job_key, "data"))
    if not (isinstance(call, list) and len(call) == 4 and call[0] == DELIVER_FUNC):
        _give_back(redis, queue_key, taken_key, job_id)  # not ours to run (or gone): rq decides
        return None
    try:
        outcome = run(job_id, call[2])
    except Exception:
        log.exception("taken job %s failed; it goes back to its queue for rq to run", job_id)
        _give_back(redis, queue_key, taken_key, job_id)
        return None
    # A job rq re-queued after its worker died may hold jobs it had taken: they go back too.
    _return_list(redis, batch_key(destination_keys, job_id), queue_key)
    pipe = redis.pipeline(transaction=True)
    pipe.delete(job_key)  # finished, result not kept (result_ttl 0), as rq would
    pipe.lrem(taken_key, 1, job_id)
    pipe.execute()
    return outcome


def _call_of(data: bytes | None) -> Any:
    """A job's serialized call, read as rq reads it: zlib-compressed (jobs rq created) or not
    (jobs intake wrote); None when it cannot be read."""
    if data is None:
        return None
    with contextlib.suppress(zlib.error):
        data = zlib.decompress(data)
    try:
        return json.loads(data)
    except ValueError:  # includes UnicodeDecodeError
        return None


def _give_back(redis: Redis, queue_key: str, taken_key: str, job_id: str) -> None:
    pipe = redis.pipeline(transaction=True)
    pipe.lpush(queue_key, job_id)
    pipe.lrem(taken_key, 1, job_id)
    pipe.execute()


def return_taken(redis: Redis, destination_keys: keys.Keys, lane: str, carrier_id: str) -> int:
    """The carrier will not run again: whatever it still held goes back to the queue."""
    return _return_list(redis, batch_key(destination_keys, carrier_id), destination_keys.rq_queue_key(lane))


def _return_list(redis: Redis, taken_key: str, queue_key: str) -> int:
    count = 0
    while redis.lmove(taken_key, queue_key, "RIGHT", "LEFT") is not None:
        count += 1
    return count
