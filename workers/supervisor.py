"""`relay worker`: one process per worker, so each has a single rq queue (atomic dequeue).

Forks, for each destination, `--concurrency` workers on its live lane and one on each other
lane (replay, backfill: keys.LANES; so a slow destination never holds up another), forwards SIGTERM
and SIGINT to them (rq's warm shutdown: the job in hand finishes), and stops them all if one
exits on its own, exiting non-zero so that the orchestrator restarts the whole set. It exits only once every
worker has (each stops its rq scheduler first). Killed outright (`kill -9`), it takes its workers
with it: each asks the kernel for a SIGTERM when the supervisor dies (workers.lifeline).

The workers are forked once the supervisor has imported their code, before it starts any thread or
opens any socket; they start once it serves their metrics (or end quietly if it cannot). A worker
started as a new `relay worker --lane ...` process imported it all again (~0.75 s of CPU each on a
2-core CI machine, four per pod), and forked they start from its memory (copy-on-write). Each starts a
session of its own, as a started process did, so a stop reaches it and its rq scheduler together.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from prometheus_client import CollectorRegistry, multiprocess, start_http_server

from service.config import Settings
from service.ops.metrics import mark_process_dead
from service.ops.metrics_dir import MULTIPROC_ENV, forget_this_pid_from_before
from service.store import keys
from workers.lifeline import SUPERVISOR_PID_ENV, stop_signals_default
from workers.runner import run_worker

POLL_SECONDS = 0.5
METRICS_BIND_ENV = "RELAY_METRICS_BIND"  # Settings.metrics_bind: named in the refusal


def start_metrics_server(port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 - a pod's metrics are scraped
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(port, addr=address, registry=registry)


class Worker:
    """A forked worker process, polled as subprocess.Popen is."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def fork_worker(settings: Settings, lane: str, destination: str, *, burst: bool, gate: tuple[int, int]) -> Worker:
    """One worker process on `destination`'s `lane`, forked from this one. It waits for a byte on the
    `gate` pipe (read end, write end) before it starts, and ends quietly if the pipe closes instead."""
    sys.stdout.flush()
    sys.stderr.flush()
    session_made, told = os.pipe()
    pid = os.fork()
    if pid == 0:
        stop_signals_default()  # not the supervisor's handler: a stop ends it, until rq's is installed
        os.close(session_made)
        _worker_main(settings, lane, destination, burst, told, gate)
    os.close(told)
    # Returns once the worker leads its own session (or died): a stop sent to its group from now on reaches it.
    with os.fdopen(session_made, "rb") as pipe:
        pipe.read()
    return Worker(pid)


def _worker_main(
    settings: Settings, lane: str, destination: str, burst: bool, told: int, gate: tuple[int, int]
) -> NoReturn:
    """The forked worker: its own session, then rq's loop; it never returns into the supervisor's code."""
    code = 1
    try:
        os.setsid()
        os.close(told)
        os.close(gate[1])
        if not os.read(gate[0], 1):  # not to start (a stop, or a metrics port it cannot bind): nothing to say
            os._exit(0)
        os.close(gate[0])
        if directory := os.environ.get(MULTIPROC_ENV):
            forget_this_pid_from_before(directory)  # before its first metric: a file of its pid from before
        ended_as_asked = run_worker(
            settings, lane=lane, destination=destination, burst=burst, log_level=settings.log_level
        )
        code = 0 if ended_as_asked else 1  # non-zero: the supervisor stops the set, and the orchestrator restarts it
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def supervise(
    settings: Settings,
    *,
    concurrency: int,
    burst: bool,
    metrics_port: int | None = None,
    then: Callable[[], object] | None = None,
) -> int:
    """Run the workers; serve their added-up metrics on metrics_port (the pod's /metrics). `then` runs
    once they are forked (a thread of the supervisor's: none may exist when it forks)."""
    os.environ[SUPERVISOR_PID_ENV] = str(os.getpid())
    lanes = [keys.LIVE] * concurrency + [lane for lane in keys.LANES if lane != keys.LIVE]
    children: list[Worker] = []
    stopping = crashed = False
    reaped: set[int] = set()

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        _signal_all(children)

    # Before the first fork: a stop that comes while they are forked (the workers start within
    # milliseconds) is a stop as asked, not the default action, which would end this process at once.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    gate = os.pipe()
    for destination in settings.destinations:
        for lane in lanes:
            if not stopping:
                children.append(fork_worker(settings, lane, destination, burst=burst, gate=gate))
    os.close(gate[0])
    refusal = None
    if metrics_port is not None and not burst and not stopping:
        address = settings.metrics_bind
        try:
            start_metrics_server(metrics_port, address)
        except OSError as exc:
            refusal = f"relay worker: cannot serve metrics on {address}:{metrics_port} ({METRICS_BIND_ENV}): {exc}"
    if refusal or stopping:
        os.close(gate[1])  # the workers end without a word
        for child in children:
            os.waitpid(child.pid, 0)
        if refusal:
            print(refusal, file=sys.stderr)
            return 2
        return 0
    os.write(gate[1], b"." * len(children))  # one byte each: start
    os.close(gate[1])
    if then is not None:
        then()
    while True:
        codes = [child.poll() for child in children]
        for child, code in zip(children, codes, strict=True):
            if code is not None and child.pid not in reaped:
                reaped.add(child.pid)
                mark_process_dead(child.pid)
        if not stopping and any(code not in (None, 0) for code in codes):  # before the end: all may crash at once
            print("relay worker: a worker process exited unexpectedly; stopping the others", file=sys.stderr)
            crashed = True
            stop(signal.SIGTERM, None)
        if all(code is not None for code in codes):
            break
        time.sleep(POLL_SECONDS)
    return 1 if crashed else 0


def _signal_all(children: list[Worker]) -> None:
    """SIGTERM (rq's warm shutdown) to each worker's whole group: its rq scheduler is its child, and
    outlives a killed worker."""
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)
