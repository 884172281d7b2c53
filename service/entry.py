"""The `relay` command's entry point, run before anything defines a metric.

prometheus-client writes a file per process into PROMETHEUS_MULTIPROC_DIR as soon as a metric is
defined (at import). Only the processes that serve metrics (`relay web`, `relay worker`, `relay dev`)
keep that directory; every other command (`relay dlq` run with `kubectl exec`, `check-config` in a Job
without the pod's volume) keeps its metrics in memory: it neither leaves files of a process that is
gone among a live pod's nor fails where the directory does not exist.
"""

from __future__ import annotations

import os
import sys

from service.ops.metrics_dir import (
    MULTIPROC_ENV,
    MetricsDirError,
    check_multiprocess_dir,
    forget_this_pid_from_before,
    temporary_metrics_dir,
)

SERVING_METRICS = frozenset({"web", "worker", "dev"})


def main() -> int:
    if sys.argv[1:2] == [] or sys.argv[1] not in SERVING_METRICS:
        directory = os.environ.pop(MULTIPROC_ENV, None)
        if sys.argv[1:2] == ["check-config"] and directory:
            try:  # what `relay web` and `relay worker` would refuse; read only: live processes may write there
                check_multiprocess_dir(directory, make=False)
            except MetricsDirError as exc:
                print(f"relay: {exc}", file=sys.stderr)
                return 2
    elif os.environ.get(MULTIPROC_ENV):
        # Usable (made if need be, nothing else in it) before the imports below define metrics: a directory
        # that cannot be made failed there with a traceback, and one refused got a metric file first. Only
        # files of this pid from an earlier process go here: `relay worker --help`, or a second worker
        # refused, leaves the live processes' files be.
        try:
            forget_this_pid_from_before(os.environ[MULTIPROC_ENV])
        except MetricsDirError as exc:
            print(f"relay: {exc}", file=sys.stderr)
            return 2
    elif sys.argv[1] == "worker":
        # It forks its workers (workers/supervisor.py) once the imports below have defined the metrics: in
        # multiprocess mode from the start, as prometheus-client asks, or the forks would count in memory.
        os.environ[MULTIPROC_ENV] = temporary_metrics_dir("worker")
    from service.cli import main as relay

    return relay()
