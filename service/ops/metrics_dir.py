"""The Prometheus multiprocess directory, set up before anything defines a metric.

prometheus-client opens its files when a metric is defined (at import of service.metrics), so
this module must not import it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Set by `relay web` to the temporary directory it made: gunicorn's arbiter, which it becomes (exec), has
# none of its exit handlers, and removes the directory at its own exit (gunicorn_hooks.on_exit).
TEMPORARY_ENV = "RELAY_TEMPORARY_METRICS_DIR"
# What prometheus-client writes there: <type>_<pid>.db (gauges also name their mode).
METRIC_FILE = re.compile(r"^(counter|gauge_[a-z]+|histogram|summary)_\d+\.db$")


class MetricsDirError(Exception):
    """The directory cannot be used; the message is one line."""


def check_multiprocess_dir(path: str, *, make: bool = True) -> list[Path]:
    """Make the directory if need be (`make`; else an absent one lists as empty) and list it; MetricsDirError
    when it cannot be used or holds anything but prometheus-client's files (pointed at the wrong directory
    by mistake, the relay refuses to start rather than delete anything there). Deletes nothing."""
    directory = Path(path)
    try:
        if make:
            directory.mkdir(parents=True, exist_ok=True)
        elif not directory.exists():
            return []
        entries = list(directory.iterdir())
    except OSError as exc:
        raise MetricsDirError(f"{MULTIPROC_ENV} {path} cannot be used: {exc.strerror}") from None
    others = sorted(e.name for e in entries if not (METRIC_FILE.match(e.name) and e.is_file() and not e.is_symlink()))
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise MetricsDirError(
            f"{MULTIPROC_ENV} {path} holds files that are not prometheus-client metric files ({shown}); "
            "point it at an empty directory of its own"
        )
    return entries


def forget_this_pid_from_before(path: str) -> None:
    """Before any metric is defined: delete the files with this process's pid that an earlier process
    left (a restarted container reuses pids); prometheus-client would open them and carry on from
    their values, then `prepare_multiprocess_dir` would delete them under it. Checks the directory
    first (MetricsDirError); deletes nothing of any other pid."""
    _delete_earlier_runs(path, other_pids=False)


def prepare_multiprocess_dir(path: str) -> None:
    """Start from a directory without an earlier run's files (they would be added in): every metric
    file goes but this process's own, written as its modules defined their metrics (a file of the same
    pid from before this process started is an earlier run's: a restarted container reuses pids). The
    directory itself stays (in Kubernetes it is an emptyDir mount point)."""
    _delete_earlier_runs(path, other_pids=True)


def _delete_earlier_runs(path: str, *, other_pids: bool) -> None:
    """Delete this pid's files from before this process started, and (`other_pids`) every other pid's."""
    own, started = f"_{os.getpid()}.db", _process_start()
    for entry in check_multiprocess_dir(path):
        with contextlib.suppress(FileNotFoundError):
            if entry.name.endswith(own):
                if started is not None and entry.stat().st_ctime < started:
                    entry.unlink()
            elif other_pids:
                entry.unlink()


def _process_start() -> float | None:
    """When this process started, in epoch seconds (Linux: /proc), else None. Boot time is whole
    seconds: up to a second early, while an earlier process's file is older than that."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        boot = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK") - 1


def temporary_metrics_dir(role: str) -> str:
    """A fresh directory for this process and the processes it forks, removed when it exits."""
    directory = tempfile.mkdtemp(prefix=f"relay-{role}-metrics-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


def use_metrics_dir(configured: str, role: str) -> None:
    """Multiprocess mode for this process and its children, in a freshly emptied directory (none
    configured: a temporary one, removed when this process exits, or by `remove_temporary_metrics_dir`
    once it has exec'd)."""
    directory = configured or temporary_metrics_dir(role)
    prepare_multiprocess_dir(directory)
    os.environ[MULTIPROC_ENV] = directory
    if configured:  # never removed, even when the process that configured it had made it
        os.environ.pop(TEMPORARY_ENV, None)
    else:
        os.environ[TEMPORARY_ENV] = directory


def remove_temporary_metrics_dir() -> None:
    """Remove the temporary directory `use_metrics_dir` made for this process before it exec'd (relay web:
    gunicorn's arbiter, at its exit), if it is still the one in use; nothing otherwise."""
    directory = os.environ.get(TEMPORARY_ENV)
    if directory and directory == os.environ.get(MULTIPROC_ENV):
        shutil.rmtree(directory, ignore_errors=True)
