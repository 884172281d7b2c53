"""`relay worker`: one process per worker, so each has a single rq queue (atomic dequeue).

Starts, for each destination, `--concurrency` workers on its live lane and one on each other
lane (replay, backfill: keys.LANES; so a slow destination never holds up another), forwards SIGTERM
and SIGINT to them (rq's warm shutdown: the job in hand finishes), and stops them all if one
exits on its own, exiting non-zero so that the orchestrator restarts the whole set. It exits only once every
worker has (each stops its rq scheduler first). Killed outright (`kill -9`), it takes its workers
with it: each asks the kernel for a SIGTERM when the supervisor dies (workers.lifeline).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Any

from prometheus_client import CollectorRegistry, multiprocess, start_http_server

from service.ops.metrics import mark_process_dead
from service.store import keys
from workers.lifeline import SUPERVISOR_PID_ENV

POLL_SECONDS = 0.5
METRICS_BIND_ENV = "RELAY_METRICS_BIND"  # the address the metrics listen on; `relay dev` sets 127.0.0.1


def start_metrics_server(port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 - a pod's metrics are scraped
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(port, addr=address, registry=registry)


def worker_argv(lane: str, destination: str, *, burst: bool) -> list[str]:
    argv = [sys.executable, "-m", "service.cli", "worker", "--lane", lane, "--destination", destination]
    return [*argv, "--burst"] if burst else argv


def supervise(*, concurrency: int, burst: bool, destinations: tuple[str, ...], metrics_port: int | None = None) -> int:
    """Run the workers; serve their added-up metrics on metrics_port (the pod's /metrics)."""
    if metrics_port is not None and not burst:
        address = os.environ.get(METRICS_BIND_ENV) or "0.0.0.0"  # noqa: S104
        try:
            start_metrics_server(metrics_port, address)
        except OSError as exc:
            print(
                f"relay worker: cannot serve metrics on {address}:{metrics_port} ({METRICS_BIND_ENV}): {exc}",
                file=sys.stderr,
            )
            return 2
    lanes = [keys.LIVE] * concurrency + [lane for lane in keys.LANES if lane != keys.LIVE]
    env = {**os.environ, SUPERVISOR_PID_ENV: str(os.getpid())}
    children = [
        subprocess.Popen(worker_argv(lane, destination, burst=burst), start_new_session=True, env=env)
        for destination in destinations
        for lane in lanes
    ]
    stopping = crashed = False
    reaped: set[int] = set()

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            # The whole group: a worker's rq scheduler is its child, and outlives a killed worker.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        codes = [child.poll() for child in children]
        for child, code in zip(children, codes, strict=True):
            if code is not None and child.pid not in reaped:
                reaped.add(child.pid)
                mark_process_dead(child.pid)
        if all(code is not None for code in codes):
            break
        if not stopping and any(code not in (None, 0) for code in codes):
            print("relay worker: a worker process exited unexpectedly; stopping the others", file=sys.stderr)
            crashed = True
            stop(signal.SIGTERM, None)
        time.sleep(POLL_SECONDS)
    return 1 if crashed else 0
