"""gunicorn server hooks (`--config python:service.cli.gunicorn_hooks`)."""

from __future__ import annotations

import time
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


# A request's body must arrive within this long: a client that stalls (or trickles) mid-body otherwise
# holds one of gunicorn's gthread threads for as long as it likes (neither --timeout nor --keep-alive
# bounds a body read). Webhook bodies are small; 5 s is ample for a real sender.
BODY_READ_SECONDS = 5.0


class DeadlineSocket:
    """The connection's socket, as the request parser sees it: each recv() waits only for what is left
    of the request's deadline (then raises TimeoutError, which ends the request and the connection)."""

    def __init__(self, sock: Any, deadline: float) -> None:
        self.wrapped = sock
        self.deadline = deadline

    def recv(self, size: int, *flags: int) -> bytes:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request body not received in time")
        self.wrapped.settimeout(remaining)
        return bytes(self.wrapped.recv(size, *flags))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


def pre_request(worker: Any, req: Any) -> None:
    unreader = getattr(req, "unreader", None)
    sock = getattr(unreader, "sock", None)
    if sock is None:
        return
    if isinstance(sock, DeadlineSocket):  # a kept-alive connection: a new deadline per request
        sock = sock.wrapped
    unreader.sock = DeadlineSocket(sock, time.monotonic() + BODY_READ_SECONDS)
