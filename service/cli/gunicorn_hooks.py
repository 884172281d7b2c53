"""gunicorn server hooks (`--config python:service.cli.gunicorn_hooks`)."""

from __future__ import annotations

from typing import Any

from service.config import Settings
from service.ops.logs import configure_logging
from service.ops.metrics import mark_process_dead


def post_fork(server: Any, worker: Any) -> None:
    # The app's own log lines as JSON, secrets redacted; gunicorn's own lines stay as they are.
    settings = Settings.from_env(role="web")
    configure_logging(settings.log_level, settings.secrets)


def child_exit(server: Any, worker: Any) -> None:
    # A gunicorn worker's metric files stay (its counts still count) but its live gauges go.
    mark_process_dead(worker.pid)
