"""The HTTP side the Paddle and Lemon Squeezy readers share (plain HTTPS with urllib3: neither has an
official Python client among our dependencies): a key sent as a bearer token, a base URL of its own
setting, reads paced at `max_rps`, a 429 waited out (its Retry-After, else a delay doubling from 1 s)
and anything else one ReadError line naming the setting at fault. What differs per provider is the
few class attributes and methods below. The key never appears in any output.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import urllib3

from service.backfill.stripe_reader import (
    MAX_BACKOFF_SECONDS,
    MAX_RATE_LIMITED_TRIES,
    Pacer,
    ReadError,
    pause_until,
)

TIMEOUT = urllib3.Timeout(connect=10, read=60)


@dataclass
class ApiReader:
    api_key: str
    api_base: str
    max_rps: float
    stop: threading.Event = field(default_factory=threading.Event)  # set: the next wait raises Interrupted
    calls: int = 0
    rate_limited: int = 0
    asked_at: float = 0.0  # time.time() just before the request of the page read last (sync stamps by it)
    _http: urllib3.PoolManager = field(init=False, repr=False)
    _pacer: Pacer = field(init=False, repr=False)
    _pause: Callable[[float], None] = field(init=False, repr=False)

    provider: ClassVar[str]  # as its lines name it: "Paddle"
    key_env: ClassVar[str]  # the key's setting: "PADDLE_API_KEY"
    key_needed: ClassVar[str]  # what the key must be, said when it is missing
    base_env: ClassVar[str]  # the base URL's setting: "PADDLE_API_BASE"
    not_a_document: ClassVar[str]  # a 200 whose body is not a JSON object: "without JSON"
    not_found: ClassVar[str]  # a 404's label when its body names none

    def __post_init__(self) -> None:
        if not self.api_key:
            raise ReadError(f"{self.key_env} is required ({self.key_needed})")
        self.api_base = self.api_base.rstrip("/")
        self._http = urllib3.PoolManager(retries=False, timeout=TIMEOUT)
        self._pause = pause_until(self.stop)
        self._pacer = Pacer(self.max_rps, sleep=self._pause)

    def _headers(self) -> dict[str, str]:
        raise NotImplementedError

    def _error(self, raw: bytes) -> tuple[str | None, str | None]:
        """The error body's label (a code or title) and detail, as far as they can be read."""
        raise NotImplementedError

    def _refusal(self, status: int, label: str | None) -> str | None:
        """The line for an answer that refuses the key, or None when it does not."""
        raise NotImplementedError

    def _get(self, url: str) -> dict[str, Any]:
        where = f"at {self.api_base} ({self.base_env})"
        delay = 1.0
        for _ in range(MAX_RATE_LIMITED_TRIES):
            self._pacer.wait()
            self.calls += 1
            self.asked_at = time.time()
            try:
                answer = self._http.request("GET", url, headers=self._headers())
            except urllib3.exceptions.HTTPError:
                raise ReadError(f"{self.provider} is unreachable {where}") from None
            if answer.status == 200:
                try:
                    body = json.loads(answer.data)
                except ValueError:
                    body = None
                if not isinstance(body, dict):
                    raise ReadError(f"{self.provider} answered 200 {self.not_a_document} {where}")
                return body
            label, detail = self._error(answer.data)
            if answer.status == 429:
                self.rate_limited += 1
                wait = retry_after_seconds(answer.headers.get("Retry-After")) or delay
                self._pause(min(wait, MAX_BACKOFF_SECONDS))
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
                continue
            if (refusal := self._refusal(answer.status, label)) is not None:
                raise ReadError(refusal)
            if answer.status == 404:
                raise ReadError(f"{self.provider} answered 404 {label or self.not_found} {where}")
            raise ReadError(f"{self.provider} answered {answer.status} {label or ''}: {detail or 'no detail'}")
        raise ReadError(f"{self.provider} kept answering 429 ({MAX_RATE_LIMITED_TRIES} tries): lower --max-rps")


def retry_after_seconds(raw: str | None) -> float | None:
    """A Retry-After header in seconds (Paddle's and Lemon Squeezy's form), or None."""
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None
