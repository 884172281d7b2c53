"""gunicorn server hooks (`--config python:service.gunicorn_hooks`)."""

from __future__ import annotations

from typing import Any

from service.metrics import mark_process_dead


def child_exit(server: Any, worker: Any) -> None:
    # A gunicorn worker's metric files stay (its counts still count) but its live gauges go.
    mark_process_dead(worker.pid)
