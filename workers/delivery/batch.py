"""More than one delivery per rq job: a running delivery job takes further jobs queued behind it
and runs them itself, on a few threads, so rq's own bookkeeping (~4 ms a job here, more than a
delivery) is paid once per batch instead of once per event.

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
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from redis import Redis

from service.store import keys
from service.store.batch_scripts import NEXT_SCRIPT
from service.store.jobs import DELIVER_FUNCS
from service.store.ledger_state import HINT_FIELD

log = logging.getLogger(__name__)
BATCH_MAX_JOBS = 200
# Stop taking more once the job has run this long, so it ends within its timeout (60 s) even
# when the delivery in hand takes every timeout of its calls.
BATCH_SECONDS = 5.0
# Jobs of a batch run on this many threads, so one's wait for Redis or the API overlaps another's work.
BATCH_THREADS = 4


def batch_key(destination_keys: keys.Keys, job_id: str) -> str:
    return f"{destination_keys.prefix}:batch:{job_id}"


def run_batch(
    redis: Redis,
    destination_keys: keys.Keys,
    lane: str,
    carrier_id: str,
    run: Callable[[str, list[Any], bytes | None], str],
    *,
    started: float,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Handle what a previous run of `carrier_id` left, then take queued jobs; returns how many ran.
    `run(job_id, args, hint)` delivers one job's update (the job's rq arguments; `hint`: its user's
    hint field when the taking script read it, else None) and says its outcome;
    `started` is when the taking job began (clock time).
    Taking stops at a job that is throttled: the ones behind it would be too."""
    batch = _Batch(redis, destination_keys, lane, carrier_id)
    done = 0
    for raw in redis.lrange(batch.taken_key, 0, -1):
        job_id = raw.decode()
        outcome = batch.run_one(job_id, redis.hget(keys.RQ_JOB_KEY_PREFIX + job_id, "data"), None, run)
        if outcome is None:
            return done
        batch.next(finished=job_id, take=False)
        done += 1
        if outcome == "throttled":
            return done
    deadline = started + BATCH_SECONDS  # counted from the start of the taking job itself
    lock = threading.Lock()
    budget = BATCH_MAX_JOBS - done
    stop = False

    def taker() -> int:
        """Take and run jobs until the batch is full, the queue empty, time up or a job throttled
        (or given back)."""
        nonlocal budget, stop
        ran, finished = 0, None
        while True:
            with lock:
                more = not stop and budget > 0 and clock() < deadline
                if more:
                    budget -= 1
            if not more and finished is None:
                return ran
            taken = batch.next(finished=finished, take=more)
            if taken is None:  # the queue is empty (for now: others may still give jobs back)
                return ran
            result = batch.run_one(*taken, run)
            stop = stop or result in (None, "throttled")
            finished = None if result is None else taken[0]
            if result is not None:
                ran += 1

    with ThreadPoolExecutor(max_workers=BATCH_THREADS, thread_name_prefix="batch") as pool:
        return done + sum(f.result() for f in [pool.submit(taker) for _ in range(BATCH_THREADS)])


class _Batch:
    """The jobs one job has taken, held in its list (`taken_key`) until handled."""

    def __init__(self, redis: Redis, destination_keys: keys.Keys, lane: str, carrier_id: str) -> None:
        self.redis = redis
        self.destination_keys = destination_keys
        self.queue_key = destination_keys.rq_queue_key(lane)
        self.taken_key = batch_key(destination_keys, carrier_id)
        self._next_script = redis.register_script(NEXT_SCRIPT)
        self._state_prefix = destination_keys.user_state_of("")
        self._in_hand_prefix = destination_keys.in_hand_of("")

    def next(self, *, finished: str | None, take: bool) -> tuple[str, bytes | None, bytes | None] | None:
        """Finish the job just handled, if any, and take the next queued job, if asked: its id, data and
        user's hint field (None when not read)."""
        taken = self._run_next(
            queue=self.queue_key,
            taken=self.taken_key,
            # keys are passed either way; unused without a finished job
            finished_job_key=keys.RQ_JOB_KEY_PREFIX + finished if finished else self.taken_key,
            finished_batch=batch_key(self.destination_keys, finished) if finished else self.taken_key,
            job_key_prefix=keys.RQ_JOB_KEY_PREFIX,
            finished_id=finished or "",
            take="1" if take else "0",
            state_prefix=self._state_prefix,
            in_hand_prefix=self._in_hand_prefix,
            hint_field=HINT_FIELD,
        )
        return None if taken is None else (taken[0].decode(), taken[1] or None, taken[2] or None)

    def _run_next(
        self,
        *,
        queue: str,
        taken: str,
        finished_job_key: str,
        finished_batch: str,
        job_key_prefix: str,
        finished_id: str,
        take: str,
        state_prefix: str,
        in_hand_prefix: str,
        hint_field: str,
    ) -> list[bytes] | None:
        """NEXT_SCRIPT, its parameters in the order of its header: KEYS, then ARGV."""
        return self._next_script(
            keys=[queue, taken, finished_job_key, finished_batch],
            args=[job_key_prefix, finished_id, take, state_prefix, in_hand_prefix, hint_field],
        )

    def run_one(
        self, job_id: str, data: bytes | None, hint: bytes | None, run: Callable[[str, list[Any], bytes | None], str]
    ) -> str | None:
        """The job's outcome, or None when it went back to the queue instead."""
        call = _call_of(data)
        if not (isinstance(call, list) and len(call) == 4 and call[0] in DELIVER_FUNCS):
            _give_back(self.redis, self.queue_key, self.taken_key, job_id)  # not ours to run (or gone): rq decides
            return None
        try:
            return run(job_id, call[2], hint)
        except Exception:
            log.exception("taken job %s failed; it goes back to its queue for rq to run", job_id)
            _give_back(self.redis, self.queue_key, self.taken_key, job_id)
            return None


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
