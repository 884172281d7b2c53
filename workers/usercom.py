"""User.com REST client: the calls of shared/seeds, with explicit timeouts and classified errors.

Outcomes are translated at this boundary: a 2xx returns; 429, 5xx, timeouts and network
errors raise `Retryable` (with Retry-After when given); any other 4xx raises `Rejected`
carrying the status and the response body with secrets removed.
"""

from __future__ import annotations

import contextlib
import json
import time
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import urllib3
from urllib3.exceptions import HTTPError

from service.metrics import USERCOM_REQUESTS, USERCOM_SECONDS
from workers.ratelimit import RateLimiter

MAX_BODY_KEPT = 2000  # characters of an error response kept for the dead-letter queue


class UsercomError(Exception):
    def __init__(self, message: str, *, status: int | None = None, body: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class Retryable(UsercomError):
    """Try again later: throttled, server error, timeout or network failure."""

    def __init__(
        self, message: str, *, status: int | None = None, body: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status, body=body)
        self.retry_after = retry_after


class Rejected(UsercomError):
    """User.com refused the request as it is; sending it again will not help."""


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


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


def _endpoint(method: str, path: str) -> str:
    """A low-cardinality name for a call: the path with ids taken out."""
    first = path.strip("/").split("/")[0]
    if first == "users-by-id":
        return f"{method} /users-by-id/:id/"
    rest = path.strip("/").split("/", 1)[1] if "/" in path.strip("/") else ""
    return f"{method} /users/{rest}/" if rest and not rest.isdigit() else f"{method} /users/:id/"


class UsercomClient:
    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        connect_timeout: float,
        read_timeout: float,
        pool_size: int = 10,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._limiter = limiter
        self._base = base_url.rstrip("/")
        self._api_key = api_key
        self._headers = {
            "Authorization": f"Token {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self._http = urllib3.PoolManager(
            maxsize=pool_size,
            retries=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        )

    def update_user(self, user_id: str, standard: dict[str, Any], custom: dict[str, Any], tags: list[str]) -> None:
        """Update by our own id; create the user first when User.com does not know it yet."""
        body: dict[str, Any] = {**standard, **custom}
        if tags:
            body["tags"] = tags
        path = f"/users-by-id/{quote(user_id, safe='')}/"
        if self._call("PUT", path, body, allow_404=True) is not None:
            return
        self._call("POST", "/users/update_or_create/", {**standard, "user_id": user_id})
        if self._call("PUT", path, body, allow_404=True) is None:
            # e.g. an id containing "/": User.com decodes it before routing and never finds the user.
            raise Rejected(f"PUT {path} -> 404 right after update_or_create: id not addressable", status=404)

    def _call(self, method: str, path: str, body: dict[str, Any], *, allow_404: bool = False) -> Any:
        url = self._base + path
        endpoint = _endpoint(method, path)
        with self._limiter.slot() if self._limiter else contextlib.nullcontext():
            started = time.perf_counter()
            try:
                response = self._http.request(method, url, body=json.dumps(body).encode(), headers=self._headers)
            except HTTPError as exc:
                USERCOM_REQUESTS.labels(endpoint, type(exc).__name__).inc()
                raise Retryable(f"{method} {path}: {type(exc).__name__}") from exc
            finally:
                USERCOM_SECONDS.labels(endpoint).observe(time.perf_counter() - started)
        status = response.status
        USERCOM_REQUESTS.labels(endpoint, str(status)).inc()
        if 200 <= status < 300:
            return response.json() if response.data else {}
        if status == 404 and allow_404:
            return None
        text = redact(response.data.decode("utf-8", "replace"), [self._api_key])[:MAX_BODY_KEPT]
        message = f"{method} {path} -> {status}"
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if self._limiter is not None:
                # Every worker waits: nobody calls again before the pause User.com asked for.
                retry_after = max(0.0, self._limiter.pause(retry_after) - time.time())
            raise Retryable(message, status=status, body=text, retry_after=retry_after)
        if status >= 500:
            raise Retryable(message, status=status, body=text)
        raise Rejected(message, status=status, body=text)
