"""The Prometheus multiprocess directory, set up before anything defines a metric.

prometheus-client opens its files when a metric is defined (at import of service.metrics), so
this module must not import it.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# What prometheus-client writes there: <type>_<pid>.db (gauges also name their mode).
METRIC_FILE = re.compile(r"^(counter|gauge_[a-z]+|histogram|summary)_\d+\.db$")


class MetricsDirError(Exception):
    """The directory cannot be used; the message is one line."""


_prepared: set[str] = set()  # by this process: metric files there now are its own


def prepare_multiprocess_dir(path: str) -> None:
    """Start from an empty directory: files of processes from an earlier run would be added in.

    Only metric files go, and only from a directory that holds nothing else: pointed at the
    wrong directory by mistake, the relay refuses to start rather than delete anything. The
    directory itself stays (in Kubernetes it is an emptyDir mount point).
    """
    if path in _prepared:
        return
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
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
    for entry in entries:
        entry.unlink(missing_ok=True)
    _prepared.add(path)


def use_metrics_dir(configured: str, role: str) -> None:
    """Multiprocess mode for this process and its children, in a freshly emptied directory."""
    directory = configured or tempfile.mkdtemp(prefix=f"relay-{role}-metrics-")
    prepare_multiprocess_dir(directory)
    os.environ[MULTIPROC_ENV] = directory
