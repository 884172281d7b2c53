"""More than one delivery per rq job: a running delivery job takes further jobs queued behind it
and runs them itself, on a few threads, so rq's own bookkeeping (~4 ms a job here, more than a
delivery) is paid once per batch instead of once per event.

Taken jobs are moved atomically (LMOVE) from the queue into a list kept under the taking job's
id, and removed from it only once handled, so nothing is lost if the worker dies meanwhile:
rq runs the taking job again (at-least-once), and it first handles what its list still holds (until
a job is throttled or the batch's time is up: the rest goes back to the queue); after its last run
the list goes back to the queue (`return_taken`), as it does when the re-queued taking job is itself
taken by another one. A taken job that raises is put back on the queue for rq to run as usual.
Deliveries are idempotent and counted once per event, so handling a job twice changes nothing.
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
# rq's bookkeeping (~4 ms a job) is paid once per this many deliveries: at 200, 5 % of the workers' CPU
# in bench/drain went to it. Each batch also ends with its threads waiting for the last one's group
# (and the next job's start): at 1,000 (a batch a second in bench/drain) the drain was ~5 % slower
# (4 interleaved pairs: 0.68-0.73x the double, 0.75-0.79x at 5,000, where BATCH_SECONDS ends it first).
BATCH_MAX_JOBS = 5000
# Stop taking more once the job has run this long, so it ends within its timeout (60 s) even
# when the delivery in hand takes every timeout of its calls.
BATCH_SECONDS = 5.0
# Jobs of a batch run on this many threads, so one's wait for Redis or the API overlaps another's work.
# bench/drain, 13 interleaved pairs (either order first): 8 drained at a median 0.70x the double, 6 at 0.62x.
BATCH_THREADS = 8
# A thread takes up to this many jobs at once (workers/delivery/group.py delivers their users together):
# 16 users share the group's Redis round trips (8 cost bench/drain ~3 % more CPU a delivery).
GROUP_SIZE = 16


def batch_key(destination_keys: keys.Keys, job_id: str) -> str:
    return f"{destination_keys.prefix}:batch:{job_id}"


Taken = tuple[str, bytes | None, bytes | None]  # a job taken: its id, data and user's hint field (or None)
RunOne = Callable[[str, list[Any], bytes | None], str]
# Jobs of users whose hint the taking script read, delivered together: their Redis calls share round
# trips (workers/delivery/group.py). Returns each job's outcome, in order.
RunGroup = Callable[[list[tuple[str, list[Any], bytes]]], list[str]]


def run_batch(
    redis: Redis,
    destination_keys: keys.Keys,
    lane: str,
    carrier_id: str,
    run: RunOne,
    *,
    started: float,
    clock: Callable[[], float] = time.monotonic,
    run_group: RunGroup | None = None,
) -> int:
    """Handle what a previous run of `carrier_id` left, then take queued jobs; returns how many ran.
    `run(job_id, args, hint)` delivers one job's update (the job's rq arguments; `hint`: its user's
    hint field when the taking script read it, else None) and says its outcome; `run_group`, when
    given, delivers several users' jobs together (each thread takes up to GROUP_SIZE jobs at once,
    fewer when the queue is short, so the threads share it); `started` is when the taking job began
    (clock time). Taking stops at a job that is throttled: the ones behind it would be too."""
    batch = _Batch(redis, destination_keys, lane, carrier_id)
    deadline = started + BATCH_SECONDS  # counted from the start of the taking job itself
    done = 0
    for raw in redis.lrange(batch.taken_key, 0, -1):
        if clock() >= deadline:  # what a killed run had taken waits in the queue for the next job
            batch.give_back_all()
            return done
        job_id = raw.decode()
        [outcome] = batch.run_many([(job_id, redis.hget(keys.RQ_JOB_KEY_PREFIX + job_id, "data"), None)], run, None)
        if outcome is not None:
            batch.next(finished=[job_id], take=0)
            done += 1
        if outcome in (None, "throttled"):  # the rest would be throttled too: they wait in the queue
            batch.give_back_all()
            return done
    lock = threading.Lock()
    budget = BATCH_MAX_JOBS - done
    stop = False
    group_size = GROUP_SIZE if run_group is not None else 1

    def taker() -> int:
        """Take and run jobs until the batch is full, the queue empty, time up or a job throttled
        (or given back)."""
        nonlocal budget, stop
        ran = 0
        finished: list[str] = []
        while True:
            with lock:
                want = 0 if stop or clock() >= deadline else min(group_size, budget)
                budget -= want
            if not want and not finished:
                return ran
            taken = batch.next(finished=finished, take=want)
            with lock:
                budget += want - len(taken)
            if not taken:  # the queue is empty (for now: others may still give jobs back)
                return ran
            results = batch.run_many(taken, run, run_group)
            finished = [job_id for (job_id, _, _), result in zip(taken, results, strict=True) if result is not None]
            ran += len(finished)
            stop = stop or any(result in (None, "throttled") for result in results)

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

    def next(self, *, finished: list[str], take: int, spread: int = BATCH_THREADS) -> list[Taken]:
        """Finish the jobs just handled and take up to `take` queued jobs (no more than a `spread`th of
        the queue, at least one): each job's id, data and user's hint field (None when not read)."""
        taken = self._run_next(
            queue=self.queue_key,
            taken=self.taken_key,
            job_key_prefix=keys.RQ_JOB_KEY_PREFIX,
            batch_prefix=batch_key(self.destination_keys, ""),
            take=take,
            spread=spread,
            state_prefix=self._state_prefix,
            in_hand_prefix=self._in_hand_prefix,
            hint_field=HINT_FIELD,
            finished_ids=finished,
        )
        return [(job_id.decode(), data or None, hint or None) for job_id, data, hint in taken]

    def _run_next(
        self,
        *,
        queue: str,
        taken: str,
        job_key_prefix: str,
        batch_prefix: str,
        take: int,
        spread: int,
        state_prefix: str,
        in_hand_prefix: str,
        hint_field: str,
        finished_ids: list[str],
    ) -> list[list[bytes]]:
        """NEXT_SCRIPT, its parameters in the order of its header: KEYS, then ARGV."""
        return self._next_script(
            keys=[queue, taken],
            args=[job_key_prefix, batch_prefix, take, spread, state_prefix, in_hand_prefix, hint_field, *finished_ids],
        )

    def give_back_all(self) -> None:
        """Every job still held goes back to the head of the queue."""
        _return_list(self.redis, self.taken_key, self.queue_key)

    def run_many(self, taken: list[Taken], run: RunOne, run_group: RunGroup | None) -> list[str | None]:
        """Each job's outcome, or None when it went back to the queue instead. Users' jobs whose hint
        is known go to `run_group` together (all back to the queue if it raises), others to `run`."""
        results: list[str | None] = [None] * len(taken)
        group: list[tuple[int, str, list[Any], bytes]] = []
        for n, (job_id, data, hint) in enumerate(taken):
            call = _call_of(data)
            if not (isinstance(call, list) and len(call) == 4 and call[0] in DELIVER_FUNCS):
                _give_back(self.redis, self.queue_key, self.taken_key, job_id)  # not ours to run (or gone): rq decides
            elif run_group is not None and hint is not None and call[2] and isinstance(call[2][0], str):
                group.append((n, job_id, call[2], hint))
            else:
                results[n] = self._run_one(job_id, call[2], hint, run)
        if group:
            try:
                outcomes = run_group([(job_id, args, hint) for _, job_id, args, hint in group])
            except Exception:
                log.exception("taken jobs %s failed; they go back to their queue", [g[1] for g in group])
                for _, job_id, _, _ in group:
                    _give_back(self.redis, self.queue_key, self.taken_key, job_id)
            else:
                for (n, *_), outcome in zip(group, outcomes, strict=True):
                    results[n] = outcome
        return results

    def _run_one(self, job_id: str, args: list[Any], hint: bytes | None, run: RunOne) -> str | None:
        try:
            return run(job_id, args, hint)
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
