"""Paging Lemon Squeezy's list endpoints (docs.lemonsqueezy.com/api: getting-started/requests and
/responses, subscriptions), for `relay sync lemonsqueezy`.

No official Python client: plain HTTPS (urllib3), JSON:API. What differs from Stripe and Paddle, and how it
is met here:
- Headers: `Authorization: Bearer <LEMONSQUEEZY_API_KEY>`; `Accept` and `Content-Type:
  application/vnd.api+json`, which the docs require on every request. A key reads the data of its own mode
  (live or test) only, and is valid for a year.
- Paging: by page number, no cursor: `page[number]`, `page[size]` (at most 100), `links.next` (URL-encoded,
  absent on the last page) and `meta.page` (`currentPage`, `lastPage`, ...). The query of `next` is followed
  against LEMONSQUEEZY_API_BASE, never its host: a proxy configured there stays in the path and the key goes
  nowhere else. Without a cursor, an interrupted sync goes on from the page it fed last (`position`), read
  again, skipping on it what was fed up to the checkpoint's object: the list moved by a few objects since
  (subscriptions created meanwhile) brings some again, which dedup answers; none is skipped, as Lemon
  Squeezy deletes no subscription (cancelling one ends it, it stays listed).
- Errors: a JSON:API `errors` array (`status`, `title`, `detail`); an unauthenticated request (no key, or a
  wrong, revoked or expired one) is a 401. 300 calls a minute: past that, 429 (the docs name no Retry-After:
  one sent is honoured, else the wait doubles from 1 s).
The key never appears in any output.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import urllib3

from service.backfill import LEMONSQUEEZY_MAX_RPS
from service.backfill.paddle_reader import retry_after_seconds
from service.backfill.stripe_reader import (
    MAX_BACKOFF_SECONDS,
    MAX_RATE_LIMITED_TRIES,
    Pacer,
    ReadError,
    pause_until,
)

PAGE_SIZE = 100  # Lemon Squeezy's maximum page[size]
JSON_API = "application/vnd.api+json"
TIMEOUT = urllib3.Timeout(connect=10, read=60)
WHERE = "(LEMONSQUEEZY_API_BASE)"


@dataclass
class LemonSqueezyReader:
    api_key: str
    api_base: str
    max_rps: float = LEMONSQUEEZY_MAX_RPS
    stop: threading.Event = field(default_factory=threading.Event)  # set: the next wait raises Interrupted
    calls: int = 0
    rate_limited: int = 0
    asked_at: float = 0.0  # time.time() just before the request of the page read last (sync stamps by it)
    page_number: int = 1  # the number of the page read last
    _http: urllib3.PoolManager = field(init=False, repr=False)
    _pacer: Pacer = field(init=False, repr=False)
    _pause: Callable[[float], None] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.api_key:
            raise ReadError("LEMONSQUEEZY_API_KEY is required (an API key of the store's mode, live or test)")
        self.api_base = self.api_base.rstrip("/")
        self._http = urllib3.PoolManager(retries=False, timeout=TIMEOUT)
        self._pause = pause_until(self.stop)
        self._pacer = Pacer(self.max_rps, sleep=self._pause)

    def position(self) -> dict[str, str]:
        """The query that reads the page read last again: where a resumed sync starts (there is no cursor)."""
        return {"page[number]": str(self.page_number)}

    def pages(self, resource: str, params: dict[str, str], after: str | None = None) -> Iterator[list[dict[str, Any]]]:
        """The resource objects of each page of a list, from `page[number]` in `params` (default the first)
        to the last, following links.next. `after`: the first page read is yielded from past that object
        when it holds it (a resumed sync: that page was fed up to it), whole otherwise."""
        query = urlencode({"page[size]": str(PAGE_SIZE), **params})
        while True:
            body = self._get(f"{self.api_base}/v1/{resource}?{query}")
            data = [obj for obj in body.get("data") or [] if isinstance(obj, dict)]
            self.page_number = _current_page(body) or _page_in(query)
            ids = [obj.get("id") for obj in data]
            fresh = data[ids.index(after) + 1 :] if after in ids else data
            after = None
            if fresh:
                yield fresh
            links = body.get("links")
            next_url = links.get("next") if isinstance(links, dict) else None
            if not data or not isinstance(next_url, str):
                return
            query = urlencode(parse_qsl(urlsplit(next_url).query, keep_blank_values=True))

    def _get(self, url: str) -> dict[str, Any]:
        delay = 1.0
        headers = {"Authorization": f"Bearer {self.api_key}", "Accept": JSON_API, "Content-Type": JSON_API}
        for _ in range(MAX_RATE_LIMITED_TRIES):
            self._pacer.wait()
            self.calls += 1
            self.asked_at = time.time()
            try:
                answer = self._http.request("GET", url, headers=headers)
            except urllib3.exceptions.HTTPError:
                raise ReadError(f"Lemon Squeezy is unreachable at {self.api_base} {WHERE}") from None
            if answer.status == 200:
                try:
                    body = json.loads(answer.data)
                except ValueError:
                    body = None
                if not isinstance(body, dict):
                    raise ReadError(
                        f"Lemon Squeezy answered 200 without a JSON:API document at {self.api_base} {WHERE}"
                    )
                return body
            title, detail = _error(answer.data)
            if answer.status == 429:
                self.rate_limited += 1
                wait = retry_after_seconds(answer.headers.get("Retry-After")) or delay
                self._pause(min(wait, MAX_BACKOFF_SECONDS))
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
                continue
            if answer.status in (401, 403):
                raise ReadError(
                    f"Lemon Squeezy refused LEMONSQUEEZY_API_KEY ({answer.status} {title or 'Unauthorized'}): "
                    "use a key of the store's mode (live or test) that has not expired (keys last a year)"
                )
            if answer.status == 404:
                raise ReadError(f"Lemon Squeezy answered 404 {title or 'Not Found'} at {self.api_base} {WHERE}")
            raise ReadError(f"Lemon Squeezy answered {answer.status} {title or ''}: {detail or 'no detail'}")
        raise ReadError(f"Lemon Squeezy kept answering 429 ({MAX_RATE_LIMITED_TRIES} tries): lower --max-rps")


def _current_page(body: dict[str, Any]) -> int | None:
    meta = body.get("meta")
    page = meta.get("page") if isinstance(meta, dict) else None
    number = page.get("currentPage") if isinstance(page, dict) else None
    return number if isinstance(number, int) and not isinstance(number, bool) and number > 0 else None


def _page_in(query: str) -> int:
    raw = dict(parse_qsl(query)).get("page[number]", "1")
    return int(raw) if raw.isdigit() and int(raw) > 0 else 1


def _error(raw: bytes) -> tuple[str | None, str | None]:
    """The first of a JSON:API `errors` array: its title and detail (at most 200 characters)."""
    try:
        errors = json.loads(raw).get("errors")
        first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    except (ValueError, AttributeError):
        return None, None
    title, detail = first.get("title"), first.get("detail")
    return (title[:100] if isinstance(title, str) else None), (detail[:200] if isinstance(detail, str) else None)
