"""Paging Stripe's list endpoints with the official `stripe` package, politely.

Stripe lists newest first; `starting_after=<last id>` continues, `has_more` says whether to.
Reads are paced under `max_rps`; a 429 backs off (Retry-After when Stripe sends one, else
exponential) and the same page is asked again. Both waits end at once when `stop` is set (Ctrl-C):
the reader raises Interrupted instead of reading again, however long the wait (at --max-rps 0.01,
100 s). A refused key (401/403) stops with one line.
The key is a restricted, read-only one (STRIPE_API_KEY) and never appears in any output.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import stripe

from service.backfill import DEFAULT_MAX_RPS

PAGE_SIZE = 100  # Stripe's maximum
MAX_BACKOFF_SECONDS = 60.0
MAX_RATE_LIMITED_TRIES = 8


class ReadError(Exception):
    """A read from the provider's API that cannot go on; the message is one line, without the key."""


class Interrupted(Exception):
    """A stop was asked while the reader waited for its next read: nothing more was read."""


class CursorGone(ReadError):
    """The list no longer holds the object `starting_after` names (deleted, or out of the list's
    filter): Stripe answers 400 resource_missing, param starting_after, however often it is asked."""


def pause_until(stop: threading.Event) -> Callable[[float], None]:
    """A sleep that `stop` ends at once by raising Interrupted: no read follows a stop asked during the wait."""

    def pause(seconds: float) -> None:
        if stop.wait(seconds):
            raise Interrupted

    return pause


@dataclass
class Pacer:
    """At most `rate` calls a second: each call waits for its slot."""

    rate: float
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    _next: float = 0.0

    def wait(self) -> None:
        now = self.clock()
        if self._next > now:
            self.sleep(self._next - now)
            now = self._next
        self._next = now + 1.0 / self.rate


TYPES_AT_MOST = 20  # types[] of GET /v1/events


@dataclass
class StripeReader:
    api_key: str
    api_base: str
    max_rps: float = DEFAULT_MAX_RPS
    stop: threading.Event = field(default_factory=threading.Event)  # set: the next wait raises Interrupted
    calls: int = 0
    rate_limited: int = 0
    asked_at: float = 0.0  # time.time() just before the request of the page read last (sync stamps by it)
    _client: stripe.StripeClient = field(init=False, repr=False)
    _pacer: Pacer = field(init=False, repr=False)
    _pause: Callable[[float], None] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.api_key:
            raise ReadError("STRIPE_API_KEY is required (a restricted key with read access to events and customers)")
        # No retries inside the library: 429s and failures are handled here, visibly.
        self._client = stripe.StripeClient(self.api_key, base_addresses={"api": self.api_base}, max_network_retries=0)
        self._pause = pause_until(self.stop)
        self._pacer = Pacer(self.max_rps, sleep=self._pause)

    def event_pages(
        self, since: int, until: int | None, types: list[str], *, undelivered_only: bool = False
    ) -> Iterator[list[dict[str, Any]]]:
        """GET /v1/events: created[gte|lte], types[], delivery_success=false if asked. Stripe filters at
        most TYPES_AT_MOST types: for more, every event is read and the types are kept here."""
        created = {"gte": since, **({"lte": until} if until is not None else {})}
        params: dict[str, Any] = {"created": created}
        if len(types) <= TYPES_AT_MOST:
            params["types"] = types
        if undelivered_only:
            params["delivery_success"] = False
        pages = self.pages("events", params)
        if "types" in params or not types:
            return pages
        wanted = set(types)
        return (kept for page in pages if (kept := [event for event in page if event.get("type") in wanted]))

    def pages(self, resource: str, params: dict[str, Any], after: str | None = None) -> Iterator[list[dict[str, Any]]]:
        """Each page of `resource` (events, customers, subscriptions) as plain dicts, newest first."""
        service = getattr(self._client.v1, resource)
        while True:
            page = self._list(service, {**params, "limit": PAGE_SIZE, **({"starting_after": after} if after else {})})
            # As Stripe sent them (to_dict() turns decimal strings into Decimal): what a webhook carries.
            data = json.loads(page.last_response.body)["data"]
            if data:
                yield data
            if not page.has_more or not data:
                return
            after = data[-1]["id"]

    def _list(self, service: Any, params: dict[str, Any]) -> Any:
        delay = 1.0
        for _ in range(MAX_RATE_LIMITED_TRIES):
            self._pacer.wait()
            self.calls += 1
            self.asked_at = time.time()
            try:
                return service.list(params=params)
            except stripe.RateLimitError as exc:
                self.rate_limited += 1
                wait = _retry_after(exc) or delay
                self._pause(min(wait, MAX_BACKOFF_SECONDS))
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
            except (stripe.AuthenticationError, stripe.PermissionError) as exc:
                raise ReadError(
                    f"Stripe refused STRIPE_API_KEY ({exc.http_status}): use a restricted key with read access"
                ) from None
            except stripe.InvalidRequestError as exc:
                if exc.code == "resource_missing" and exc.param == "starting_after":
                    raise CursorGone(f"Stripe no longer lists {params['starting_after']}: {exc.user_message}") from None
                raise ReadError(
                    f"Stripe refused the request ({exc.http_status}, {exc.param}): {exc.user_message}"
                ) from None
            except stripe.APIConnectionError:
                raise ReadError(f"Stripe is unreachable at {self.api_base} (STRIPE_API_BASE)") from None
            except stripe.StripeError as exc:
                raise ReadError(f"Stripe answered {exc.http_status}") from None
        raise ReadError(f"Stripe kept answering 429 ({MAX_RATE_LIMITED_TRIES} tries): lower --max-rps")


def _retry_after(exc: stripe.RateLimitError) -> float | None:
    raw = (exc.headers or {}).get("Retry-After")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None
