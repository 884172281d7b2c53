"""The web boundary's one table from the relay's errors (service/core/errors.py) to HTTP
statuses, and the handlers that answer `{"error": {"code", "message"}}`. Redis errors become
StoreUnavailable here, and only here."""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import Flask, request
from gunicorn.http.errors import ParseException
from redis.exceptions import RedisError, ResponseError
from werkzeug.exceptions import ClientDisconnected, HTTPException

from service.core import errors as e
from service.store.durability import NotDurable, NotHonoured

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 1024 * 1024  # Stripe events are far smaller; anything above is refused with 413

STATUS: dict[type[e.RelayError], int] = {  # the most specific class listed wins
    e.UnsupportedMediaType: 415,
    e.MalformedJson: 400,
    e.PayloadTooLarge: 413,
    e.SignatureError: 401,
    e.InvalidPayload: 422,
    e.InvalidRequest: 400,
    e.Unauthorized: 401,
    e.Conflict: 409,
    e.NotFound: 404,
    e.StoreUnavailable: 503,
    e.RequestError: 400,
    e.RelayError: 500,
}


def status_of(error: e.RelayError) -> int:
    return next(STATUS[cls] for cls in type(error).__mro__ if cls in STATUS)


def relay_error(exc: e.RelayError) -> tuple[dict[str, Any], int]:
    return exc.body(), status_of(exc)


# The error codes of a Redis that refuses a command (its messages quote no data of ours).
REDIS_REFUSALS = re.compile(r"\b(OOM|READONLY|NOREPLICAS|MISCONF|BUSY|MASTERDOWN|NOSCRIPT|NOPERM)\b")


def redis_error(exc: RedisError) -> tuple[dict[str, Any], int]:
    if isinstance(exc, NotHonoured):  # no 2xx can come until Redis (or the setting) is changed
        log.error("%s", exc)
        return relay_error(e.StoreUnavailable(f"{exc}; webhooks are answered 503 until it can be"))
    if isinstance(exc, NotDurable):  # Redis answered: the wait RELAY_DURABLE_ACK asks for did not end in time
        log.error("not durable in time: %s", exc)
        return relay_error(
            e.StoreUnavailable(
                "the event is in Redis but not yet on disk or a replica (RELAY_DURABLE_ACK); retry later, "
                "and it is answered once it is"
            )
        )
    if isinstance(exc, ResponseError):  # reached, and it refused: out of memory (OOM), a replica (READONLY)...
        code = next(iter(REDIS_REFUSALS.findall(str(exc))), "error")  # a script's error quotes it within
        log.error("redis refused the request: %s", code)
        return relay_error(e.StoreUnavailable(f"redis refused the request ({code}); retry later"))
    log.error("redis unavailable: %s", type(exc).__name__)
    return relay_error(e.StoreUnavailable("redis is not reachable; retry later"))


def http_error(exc: HTTPException) -> tuple[dict[str, Any], int, dict[str, str]]:
    if exc.code == 413:
        return (*relay_error(e.PayloadTooLarge(f"request body is larger than {MAX_BODY_BYTES} bytes")), {})
    code = (exc.name or "error").lower().replace(" ", "_")
    # The exception's own headers but its HTML content type: a 405 must say `Allow` (RFC 9110).
    headers = {name: value for name, value in exc.get_headers() if name.lower() != "content-type"}
    return {"error": {"code": code, "message": exc.description or exc.name}}, exc.code or 500, headers


def check_body_size() -> None:
    """413 for a body over MAX_BODY_BYTES, however it is sent. Flask refuses a Content-Length over
    its MAX_CONTENT_LENGTH (one byte more), but cuts a chunked body (no Content-Length) there
    without a word; read up to that byte (cached for the view), it tells the body too large.

    A server that ends the body itself (gunicorn: `wsgi.input_terminated`) ends it where the client
    stopped sending, short of its Content-Length when the client closed its side early: that body
    is incomplete (400), never taken as it is."""
    length = request.content_length
    terminated = request.environ.get("wsgi.input_terminated")
    if length is None and terminated:
        length = len(request.get_data())
    if length is not None and length > MAX_BODY_BYTES:
        raise e.PayloadTooLarge(f"request body is larger than {MAX_BODY_BYTES} bytes")
    if length is not None and terminated and len(request.get_data()) < length:
        raise e.IncompleteBody("the request body is shorter than its Content-Length says")


def malformed_body(exc: ParseException) -> tuple[dict[str, Any], int]:
    """gunicorn reads a chunked body as the app asks for it: a chunk it cannot parse ends up here."""
    return relay_error(e.MalformedRequest("the request body is not valid HTTP/1.1 chunked encoding"))


def incomplete_body(exc: ClientDisconnected) -> tuple[dict[str, Any], int]:
    """The body ended short of its Content-Length or chunk size, or stopped coming (the body deadline)."""
    return relay_error(
        e.IncompleteBody("the request body is shorter than it says, or did not arrive within the body deadline")
    )


def unexpected_error(exc: Exception) -> tuple[dict[str, Any], int]:
    log.exception("unexpected error on %s %s", request.method, request.path)
    return {"error": {"code": "internal_error", "message": "internal error"}}, 500


def register(app: Flask) -> None:
    app.before_request(check_body_size)
    app.register_error_handler(e.RelayError, relay_error)
    app.register_error_handler(ClientDisconnected, incomplete_body)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(RedisError, redis_error)
    app.register_error_handler(ParseException, malformed_body)
    app.register_error_handler(Exception, unexpected_error)
