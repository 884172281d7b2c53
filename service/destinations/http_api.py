"""One HTTP API behind a destination: a connection pool with explicit timeouts, the shared rate
limiter, metrics, and the classification of every answer (service/destinations/base.py).

A 2xx returns the JSON body; 429, 5xx, timeouts and network errors raise `Retryable` (a 429
first pauses every worker of the destination until its Retry-After); any other 4xx raises
`Rejected` with the status and the response body, secrets removed.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import time
from collections.abc import Callable
from contextvars import ContextVar
from email.utils import parsedate_to_datetime
from typing import Any

from prometheus_client import Counter, Histogram

from service.core.redaction import Redactor
from service.core.version import version
from service.destinations.base import Limiter, Rejected, Retryable
from service.destinations.dropped import DroppedValue
from service.destinations.keepalive import KeepAlivePool

MAX_BODY_KEPT = 2000  # characters of an error response kept for the dead-letter queue
# What a delivery checks before each of its calls, once the call's slot is held: it raises to stop the
# call (workers: a user's lease that may have lapsed, or a job with no time left for the call). Per
# thread, as a batch's threads share a client.
BEFORE_CALL: ContextVar[Callable[[], None] | None] = ContextVar("before_call", default=None)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Retry-After as seconds or an HTTP date -> seconds to wait (never negative)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, moment - (time.time() if now is None else now))


class HttpApi:
    def __init__(
        self,
        *,
        base_url: str,
        headers: dict[str, str],
        secrets: list[str],
        connect_timeout: float,
        read_timeout: float,
        requests: Counter,
        seconds: Histogram,
        pool_size: int = 10,
        limiter: Limiter | None = None,
        explain: Callable[[str], str] | None = None,
    ) -> None:
        self._http = KeepAlivePool(
            base_url, connect_timeout=connect_timeout, read_timeout=read_timeout, max_idle=pool_size
        )
        self._headers = {"User-Agent": f"relay/{version()}", **headers}
        self._redact = Redactor(secrets)
        self._requests, self._seconds = requests, seconds
        self._counters: dict[tuple[str, str], Any] = {}
        self._timers: dict[str, Any] = {}
        self._limiter = limiter
        self._explain = explain  # error body -> a short reason for the message (and the DLQ)
        # (endpoint, status) of the last answer, for the trace: per thread, as a batch's deliveries
        # share this client on several threads.
        self._last_call: ContextVar[tuple[str, int] | None] = ContextVar(f"last_call_{id(self)}", default=None)

    @property
    def last_call(self) -> tuple[str, int] | None:
        return self._last_call.get()

    def _counter(self, endpoint: str, status: str) -> Any:
        """The request counter of (endpoint, status), looked up once (labels() costs a lock and a dict)."""
        child = self._counters.get((endpoint, status))
        if child is None:
            child = self._counters[(endpoint, status)] = self._requests.labels(endpoint, status)
        return child

    def _timer(self, endpoint: str) -> Any:
        child = self._timers.get(endpoint)
        if child is None:
            child = self._timers[endpoint] = self._seconds.labels(endpoint)
        return child

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any],
        *,
        endpoint: str,
        allow_404: bool = False,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """The JSON answer; None for a 404 when allowed; raises Retryable or Rejected otherwise."""
        with self._limiter.slot() if self._limiter else contextlib.nullcontext():
            if (check := BEFORE_CALL.get()) is not None:
                check()
            started = time.perf_counter()
            try:
                response = self._http.request(
                    method,
                    self._http.prefix + path,
                    json.dumps(body).encode(),
                    {**self._headers, **headers} if headers else self._headers,
                )
            except (OSError, http.client.HTTPException) as exc:
                self._counter(endpoint, type(exc).__name__).inc()
                raise Retryable(f"{method} {path}: {type(exc).__name__}") from exc
            finally:
                self._timer(endpoint).observe(time.perf_counter() - started)
        status = response.status
        self._last_call.set((endpoint, status))
        self._counter(endpoint, str(status)).inc()
        if 200 <= status < 300:
            try:
                return json.loads(response.body) if response.body else {}
            except ValueError:  # e.g. a proxy's page: what the call did is unknown, and sending again is safe
                raise Retryable(f"{method} {path} -> {status}: the answer is not JSON", status=status) from None
        if status == 404 and allow_404:
            return None
        text = self._redact(response.body.decode("utf-8", "replace"))[:MAX_BODY_KEPT]
        message = f"{method} {path} -> {status}"
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            if self._limiter is not None:
                # Every worker waits: nobody calls again before the pause the API asked for.
                retry_after = max(0.0, self._limiter.pause(retry_after) - time.time())
            raise Retryable(message, status=status, body=text, retry_after=retry_after)
        if status >= 500:
            raise Retryable(message, status=status, body=text)
        if status in (401, 403):  # the key, not the update, is refused: retried (with backoff) once it is fixed
            raise Retryable(f"{message}: the API key is refused (check it)", status=status, body=text)
        if self._explain is not None:
            message = f"{message}: {self._explain(text)}"
        raise Rejected(message, status=status, body=text)


class ApiClient:
    """What every destination client over an HttpApi shares: for the delivery in this thread (a
    batch's deliveries share the client), its last call and the values its last send left out."""

    def __init__(self, api: HttpApi) -> None:
        self._api = api
        self._dropped: ContextVar[tuple[DroppedValue, ...]] = ContextVar(f"dropped_{id(self)}", default=())
        self._body: ContextVar[dict[str, Any] | None] = ContextVar(f"body_{id(self)}", default=None)

    def _sending(self, body: dict[str, Any] | None) -> None:
        """What this send puts in its call, when the destination keeps other fields than the update's
        (UserKit: one name, no tags): the user's trace shows it (last_sent). None: the update as it is."""
        self._body.set(body)

    @property
    def last_sent(self) -> dict[str, Any] | None:
        """The fields the last send() in this thread sent, when they are not the update's own (_sending)."""
        return self._body.get()

    def _left_out(self, dropped: list[DroppedValue], *, also: bool = False) -> None:
        """What this send leaves out (`also`: in addition to what it left out already)."""
        self._dropped.set((*self._dropped.get(), *dropped) if also else tuple(dropped))

    @property
    def last_dropped(self) -> list[DroppedValue]:
        """What the last send() in this thread left out of its update, and why."""
        return list(self._dropped.get())

    @property
    def last_call(self) -> tuple[str, int] | None:
        """(endpoint, status) of the last answer in this thread (the user's trace shows it)."""
        return self._api.last_call
