"""The Prometheus multiprocess directory, set up before anything defines a metric.

prometheus-client opens its files when a metric is defined (at import of service.metrics), so
this module must not import it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir(path: str) -> None:
    """Start from an empty directory: files of processes from an earlier run would be added in.

    Only the contents go: in Kubernetes the directory itself is an emptyDir mount point.
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for entry in directory.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def use_metrics_dir(configured: str, role: str) -> None:
    """Multiprocess mode for this process and its children, in a freshly emptied directory."""
    directory = configured or tempfile.mkdtemp(prefix=f"relay-{role}-metrics-")
    prepare_multiprocess_dir(directory)
    os.environ[MULTIPROC_ENV] = directory
