"""gunicorn server hooks (`--config python:service.cli.gunicorn_hooks`)."""

from __future__ import annotations

import errno
import json
import logging
import signal
import time
import warnings
from typing import Any

from gunicorn import util

from service.config import Settings
from service.ops.logs import RedactSecrets, configure_logging
from service.ops.metrics import mark_process_dead
from service.ops.metrics_dir import remove_temporary_metrics_dir

# gunicorn's own loggers: their lines are gunicorn's format, not the app's, and may quote a request's header line.
GUNICORN_LOGGERS = ("gunicorn.error", "gunicorn.access")


def on_starting(server: Any) -> None:
    # In the arbiter, before it forks: its workers inherit the filter.
    redact = RedactSecrets(Settings.from_env(role="web").secrets)
    for name in GUNICORN_LOGGERS:
        logging.getLogger(name).addFilter(redact)


def post_fork(server: Any, worker: Any) -> None:
    # gunicorn installs a worker's own SIGTERM handler only once the worker has booted; a SIGTERM before
    # that (a pod stopped just after it started) reached the master's inherited handler and was lost:
    # the worker served on until the master killed it after the graceful timeout (30 s). Until its own
    # handler is in place, a stop signal asks the worker to stop as gunicorn's would.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: setattr(worker, "alive", False))
    # The gevent worker patches the standard library next (init_process), after the arbiter imported ssl
    # (gunicorn itself, redis, urllib3), and gevent warns so in every worker, in lines that are not JSON.
    # What keeps ssl's own classes unpatched (urllib3.util.ssl_, redis.asyncio) is never used by a web
    # worker: it makes no outbound TLS, and redis-py's sync client reaches ssl through the patched module.
    warnings.filterwarnings("ignore", message="Monkey-patching ssl after ssl has already been imported")
    # The app's own log lines as JSON, secrets redacted; gunicorn's own lines stay as they are.
    settings = Settings.from_env(role="web")
    configure_logging(settings.log_level, settings.secrets)
    # What gunicorn answers itself (a request it cannot parse) in the app's error shape, not an HTML page.
    util.write_error = write_json_error


# gunicorn's own error answers (gunicorn.workers.base.Worker.handle_error), as the app's: a stable code and
# a fixed message, which never quotes the request (its line or headers may carry a token).
GUNICORN_ERRORS = {
    400: ("malformed_request", "the request is not valid HTTP/1.1 (request line, header fields or chunked body)"),
    403: ("forbidden", "the request is forbidden"),
    414: ("request_line_too_long", "the request line is too long"),
    417: ("expectation_failed", "the Expect header names an expectation the server cannot meet"),
    431: ("header_fields_too_large", "the request's header fields are too many or too large"),
    501: ("unsupported_transfer_coding", "the request's Transfer-Encoding is not supported"),
}


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn.util.write_error's replacement: the same status line, a JSON body."""
    code, message = GUNICORN_ERRORS.get(status_int, ("internal_error", "internal error"))
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
    util.write_nonblock(sock, f"{head}Content-Length: {len(body)}\r\n\r\n".encode("latin1") + body)


def child_exit(server: Any, worker: Any) -> None:
    # A gunicorn worker's metric files stay (its counts still count) but its live gauges go.
    mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    # The metrics directory `relay web` made when none was configured (it exec'd gunicorn: no exit handler
    # of its own runs); a configured one stays.
    remove_temporary_metrics_dir()


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
        self.timeout = sock.gettimeout()  # restored once the request is answered (post_request)

    def recv(self, size: int, *flags: int) -> bytes:
        remaining = self.deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            self.wrapped.settimeout(remaining)
            return bytes(self.wrapped.recv(size, *flags))
        except TimeoutError:
            # A reset, for gunicorn: the connection is dropped quietly (a plain timeout is logged
            # with a traceback as a "socket error").
            raise ConnectionResetError(errno.ECONNRESET, "request body not received in time") from None

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


def post_request(worker: Any, req: Any, environ: Any, resp: Any) -> None:
    # Between requests a kept-alive connection waits under gunicorn's keep-alive timeout, not under
    # the last request's body deadline (which had passed, and ended every idle wait in a traceback).
    unreader = getattr(req, "unreader", None)
    sock = getattr(unreader, "sock", None)
    if isinstance(sock, DeadlineSocket):
        sock.wrapped.settimeout(sock.timeout)
        unreader.sock = sock.wrapped
