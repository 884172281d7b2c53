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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from service.backfill import LEMONSQUEEZY_MAX_RPS
from service.backfill.api_reader import ApiReader

PAGE_SIZE = 100  # Lemon Squeezy's maximum page[size]
JSON_API = "application/vnd.api+json"


@dataclass
class LemonSqueezyReader(ApiReader):
    max_rps: float = LEMONSQUEEZY_MAX_RPS
    page_number: int = 1  # the number of the page read last

    provider = "Lemon Squeezy"
    key_env = "LEMONSQUEEZY_API_KEY"
    key_needed = "an API key of the store's mode, live or test"
    base_env = "LEMONSQUEEZY_API_BASE"
    not_a_document = "without a JSON:API document"
    not_found = "Not Found"

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

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", "Accept": JSON_API, "Content-Type": JSON_API}

    @staticmethod
    def _error(raw: bytes) -> tuple[str | None, str | None]:
        """The first of a JSON:API `errors` array: its title and detail (at most 200 characters)."""
        try:
            errors = json.loads(raw).get("errors")
            first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
        except (ValueError, AttributeError):
            return None, None
        title, detail = first.get("title"), first.get("detail")
        return (title[:100] if isinstance(title, str) else None), (detail[:200] if isinstance(detail, str) else None)

    def _refusal(self, status: int, label: str | None) -> str | None:
        if status not in (401, 403):
            return None
        return (
            f"Lemon Squeezy refused LEMONSQUEEZY_API_KEY ({status} {label or 'Unauthorized'}): "
            "use a key of the store's mode (live or test) that has not expired (keys last a year)"
        )


def _current_page(body: dict[str, Any]) -> int | None:
    meta = body.get("meta")
    page = meta.get("page") if isinstance(meta, dict) else None
    number = page.get("currentPage") if isinstance(page, dict) else None
    return number if isinstance(number, int) and not isinstance(number, bool) and number > 0 else None


def _page_in(query: str) -> int:
    raw = dict(parse_qsl(query)).get("page[number]", "1")
    return int(raw) if raw.isdigit() and int(raw) > 0 else 1
