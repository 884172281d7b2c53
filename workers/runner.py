"""`relay worker`: the composition root of a delivery worker process.

Uses rq's SimpleWorker (no fork per job: rq's forking Worker manages ~11 jobs/s here) with
the scheduler enabled, since retries are scheduled jobs. SIGTERM is rq's warm shutdown: the
job in hand finishes, then the process exits.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue, SimpleWorker
from rq.exceptions import StopRequested
from rq.job import Job
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer
from rq.worker import WorkerStatus

from service.config import Settings
from service.config.settings import DEFAULT_MAINTENANCE_INTERVAL_SECONDS
from service.destinations.base import Destination
from service.destinations.registry import DESTINATIONS
from service.store import keys
from service.store.connection import worker_redis
from service.store.ledger import Store
from service.store.scheduler_scripts import FREE_STALE_LOCK_SCRIPT, SCHEDULER_LOCK_TTL_SECONDS, SCHEDULER_STALE_SECONDS
from workers.delivery.context import DeliveryContext, configure
from workers.heartbeat import HEARTBEAT_TTL_SECONDS, heartbeat_while_running
from workers.lifeline import die_with_supervisor, forks_die_with_this_process, stop_signals_deferred
from workers.ordering import Ordering
from workers.ratelimit import LimitConfig, RateLimiter, lease_ms_for


def limit_config(settings: Settings, destination: str) -> LimitConfig:
    limits = settings.destination(destination)
    return LimitConfig(
        limits.rate_limit,
        limits.burst,
        limits.max_in_flight,
        lease_ms=lease_ms_for(limits.connect_timeout + limits.read_timeout),
        max_pause_seconds=settings.retry_max_delay_seconds,
    )


def build_destination(settings: Settings, destination: str, limiter: RateLimiter) -> Destination:
    return DESTINATIONS[destination].client(settings.destination(destination), limiter)


def build_context(settings: Settings, destination: str, lane: str = keys.LIVE) -> DeliveryContext:
    redis = worker_redis(settings.redis_url)
    own = keys.Keys(destination)
    below_live = lane == keys.BACKFILL
    limiter = RateLimiter(redis, limit_config(settings, destination), destination_keys=own, below_live=below_live)
    # What is learned per user (last-written times, a destination's memory) is kept as long as an old event
    # can still come back (retry or replay).
    memory_ttl = settings.dedup_ttl_seconds + settings.dlq_ttl_days * 24 * 3600
    client = build_destination(settings, destination, limiter)
    return DeliveryContext(
        settings=settings,
        redis=redis,
        store=Store.from_settings(redis, settings, destination),
        client=client,
        limiter=limiter,
        queues={
            lane: DeliveryQueue(own.queue_name(lane), connection=redis, serializer=JSONSerializer)
            for lane in keys.LANES
        },
        ordering=Ordering(
            redis, memory_ttl_seconds=memory_ttl, destination_keys=own, memory_expires=client.memory_expires
        ),
    )


# A job whose worker died is found abandoned HEARTBEAT_TTL_SECONDS after its last heartbeat (sent from
# a thread while it runs: workers/heartbeat.py), at the next maintenance pass of any worker of its
# queue: within about 6 + 5 s (rq's defaults: the job's timeout + 60 s, then a pass every 10 minutes,
# and only between jobs or after a 405 s idle wait).
MAINTENANCE_INTERVAL_SECONDS = DEFAULT_MAINTENANCE_INTERVAL_SECONDS  # RELAY_MAINTENANCE_INTERVAL_SECONDS
# Two maintenance intervals (the default's): cleaning takes well under that. Workers are SIGKILLed
# mid-clean too, and until the lock lapses nobody re-runs the jobs of dead workers: with 60 s,
# bench/chaos settled 34-40 s after the last kill in 2 runs of 7 (goal 20 s). Two workers cleaning at
# once, should one take longer, hand an abandoned job on twice: deliveries are idempotent and counted once.
MAINTENANCE_LOCK_SECONDS = 10


class DeliveryQueue(Queue):
    """rq's Queue, but a worker killed while cleaning holds the cleaning lock for MAINTENANCE_LOCK_SECONDS,
    not rq's 15 minutes: until it lapses nobody re-runs the abandoned jobs."""

    def acquire_maintenance_lock(self) -> bool:
        return bool(self.connection.set(self.registry_cleaning_key, 1, nx=True, ex=MAINTENANCE_LOCK_SECONDS))


class DeliveryWorker(SimpleWorker):
    """rq's SimpleWorker (no fork per job) with faster recovery of jobs whose worker died.

    A SimpleWorker sends no heartbeat while its job runs; here a thread does (workers/heartbeat.py),
    so a job's started-registry entry lives only HEARTBEAT_TTL_SECONDS past its last beat and
    maintenance finds a dead worker's job within seconds. An idle worker waits for a job at most
    one maintenance interval, so maintenance still runs when every remaining job is stranded with
    a dead worker and the queue is empty.
    """

    # rq waits 1, 2, 4 ... up to 60 s between reconnection attempts while Redis is unreachable: after
    # a Redis restart the workers would idle for up to a minute with a backlog waiting (seen in a
    # loaded test run). Five seconds bounds that wait and still spares a Redis that is down.
    max_connection_wait_time = 5.0
    drained = False  # the queue was found empty (how a burst worker's loop ends)

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        # rq registers the worker, subscribes and starts the scheduler before it installs its own
        # SIGTERM handler and enters the try/finally that unregisters the worker. rq's handler
        # raises StopRequested wherever the process happens to be: in that window the exception
        # escapes work() (the process ends with the worker still registered) or is swallowed by an
        # `except Exception` on the way (a log handler's: the worker never stops). Until then a stop
        # signal only asks to stop; rq's loop checks that first thing, inside the try/finally.
        signal.signal(signal.SIGTERM, self._stop_once_started)
        signal.signal(signal.SIGINT, self._stop_once_started)
        super().bootstrap(*args, **kwargs)

    def _shutdown(self) -> None:
        # An idle worker's stop is the StopRequested rq raises wherever the process is; raised inside
        # code that swallows exceptions (redis-py's Connection.__del__ during garbage collection:
        # `except Exception: pass`) it was lost, and the worker waited for jobs forever (a SIGTERMed
        # pod hung until killed). Remembered first, the stop ends the loop at its next turn anyway
        # (should_run_maintenance_tasks).
        self._stop_requested = True
        super()._shutdown()

    @property
    def should_run_maintenance_tasks(self) -> bool:
        """Asked at the top of each turn of both of rq's loops, with no job in hand: a stop that was
        requested ends the worker here. rq's own check is in the outer loop only, and an idle worker
        never leaves the inner one (it waits for a job again after each dequeue timeout): a stop
        swallowed on its way left it waiting for jobs forever (seen in a loaded test run)."""
        if self._stop_requested:
            raise StopRequested()
        return bool(super().should_run_maintenance_tasks)

    def _stop_once_started(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.pid and self.scheduler is not None:
            self.scheduler.request_stop()  # the scheduler's process, forked before it installs its handler
        else:
            self._stop_requested = True

    def _start_scheduler(self, *args: Any, **kwargs: Any) -> None:
        # rq starts the scheduler outside work()'s try/finally: a stop arriving then would skip the
        # teardown (worker left registered, scheduler never stopped and joined at exit: a hang). The
        # fork runs with stops held; one that came meanwhile stops the loop before its first job.
        try:
            with stop_signals_deferred():
                super()._start_scheduler(*args, **kwargs)
        except StopRequested:
            self._stop_requested = True

    def run_maintenance_tasks(self) -> None:
        """rq's maintenance, after freeing the scheduler lock of a scheduler that died holding it: rq's
        maintenance then starts this worker's scheduler on the queue (it retries while it has none)."""
        free = self.connection.register_script(FREE_STALE_LOCK_SCRIPT)
        stale_at = SCHEDULER_LOCK_TTL_SECONDS - SCHEDULER_STALE_SECONDS
        for queue in self.queues:
            if free(keys=[RQScheduler.get_locking_key(queue.name)], args=[stale_at]):
                log.warning("freed the scheduler lock of queue %s: its scheduler died holding it", queue.name)
        super().run_maintenance_tasks()

    def execute_job(self, job: Job, queue: Queue) -> None:
        """SimpleWorker.execute_job, with the job's heartbeat renewed from a thread while it runs.

        Redis gone in the middle (rq's own bookkeeping after the job, or its failure handling): rq's
        loop would end on the error, and the worker process with it, silently (seen in a loaded test
        run: a Redis restart left a pod without live delivery). The job stays in the started registry,
        and maintenance hands it on once its heartbeat lapses; this worker waits for Redis (backing off
        as rq does between its own reconnections) and goes on."""
        try:
            execution = self.prepare_execution(job)
            with heartbeat_while_running(self, job, execution):
                self.perform_job(job, queue, execution)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("job %s: redis became unreachable (%s); waiting for it", job.id, type(exc).__name__)
            wait_for_redis(
                self.connection,
                f"worker {self.name}",
                max_delay=self.max_connection_wait_time,
                stopped=lambda: self._stop_requested,  # SIGTERM meanwhile: end instead (rq's loop does)
            )
        self.set_state(WorkerStatus.IDLE)

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        """rq's: a burst worker's loop ends when this finds the queue empty (None): remembered, so that
        an end for any other reason (an error rq's loop does not handle) can be told from it."""
        result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        self.drained = result is None
        return result

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return HEARTBEAT_TTL_SECONDS

    @property
    def dequeue_timeout(self) -> int:
        return int(self.maintenance_interval)  # an idle worker still runs maintenance this often


REDIS_WAIT_MAX_SECONDS = 30.0
log = logging.getLogger(__name__)


def quiet_maintenance(record: logging.LogRecord) -> bool:
    """rq logs its registry cleaning at INFO, every maintenance interval per worker (an idle `relay dev`:
    ~300 lines in 8 minutes): shown at DEBUG only."""
    routine = record.levelno == logging.INFO and "cleaning" in str(record.msg) and "registries" in str(record.msg)
    return not routine or logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def wait_for_redis(
    redis: Redis,
    who: str = "worker",
    *,
    sleep: Callable[[float], None] = time.sleep,
    max_delay: float = REDIS_WAIT_MAX_SECONDS,
    stopped: Callable[[], bool] = lambda: False,
) -> int:
    """Return once Redis answers (or `stopped()` says to give up); until then one log line per
    attempt, backing off to `max_delay`. A worker started before Redis (or during its failover)
    waits instead of crashing."""
    attempt, delay = 1, 1.0
    while not stopped():
        try:
            redis.ping()
            return attempt
        except RedisError as exc:
            log.warning(
                "%s: redis is not reachable (%s); attempt %d, next in %.0f s", who, type(exc).__name__, attempt, delay
            )
        sleep(delay)
        attempt, delay = attempt + 1, min(delay * 2, max_delay)
    return attempt


def run_worker(
    settings: Settings,
    *,
    lane: str = keys.LIVE,
    destination: str,
    burst: bool = False,
    log_level: str = "INFO",
) -> bool:
    """One worker process on one destination's lane. One queue per worker: rq's multi-queue
    dequeue is not atomic. It and its rq scheduler (a fork) stop when their parent dies. True when
    it ended as asked (a stop, or a burst done); False when rq's loop gave up on an error."""
    die_with_supervisor()
    waiting = worker_redis(settings.redis_url)
    wait_for_redis(waiting, f"{destination} {lane} worker")
    waiting.close()
    context = build_context(settings, destination, lane)
    context.limiter.shorten_pause()  # one set before RELAY_RETRY_MAX_DELAY_SECONDS capped them
    forks_die_with_this_process()
    configure(context)
    worker = DeliveryWorker(
        [context.queues[lane]],
        connection=context.redis,
        serializer=JSONSerializer,
        maintenance_interval=settings.maintenance_interval_seconds,
    )
    logging.getLogger("rq.worker").addFilter(quiet_maintenance)
    worker.work(burst=burst, with_scheduler=True, logging_level=log_level)
    # rq's loop also ends on an error it does not handle (it logs it): then the process must not end
    # as if asked to (exit 0: the supervisor would go on without it, a pod silently short of a worker).
    return bool(worker._stop_requested or (burst and worker.drained))
