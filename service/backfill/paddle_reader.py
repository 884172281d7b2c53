"""Paging Paddle Billing's `GET /events` (https://developer.paddle.com/api-reference/events/list-events).

Paddle has no official Python client in our dependencies: plain HTTPS (urllib3) with
`Authorization: Bearer <PADDLE_API_KEY>`. What differs from Stripe, and how it is met here:
- Paging: `per_page` (default 50, max 200), `order_by=id[DESC]` (event ids are time-ordered, so
  newest first as with Stripe), `meta.pagination.next` (a URL carrying the filters and the `after`
  cursor) and `has_more`. The query of `next` is followed against PADDLE_API_BASE, never its host:
  a proxy configured there stays in the path and the key goes nowhere else.
- Time window: `from`/`to` (RFC 3339; added to the API in 2026). Each event's `occurred_at` is also
  checked here, and the read stops at the first event older than the window: an API that ignores
  the filter costs pages, never a wrong result.
- Types: `event_type`, comma-separated. No delivery filter exists (Stripe's delivery_success).
- Errors: `{"error": {"type", "code", "detail"}}`; a bad, revoked or missing key is a 403
  (invalid_token, authentication_missing, authentication_malformed, forbidden); 429
  too_many_requests with Retry-After (seconds). Paddle allows 240 requests a minute per IP:
  PADDLE_MAX_RPS stays under it. The key never appears in any output.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from service.backfill import PADDLE_MAX_RPS
from service.backfill.api_reader import ApiReader
from service.backfill.stripe_reader import ReadError
from service.sources.base import iso_seconds

PAGE_SIZE = 200  # Paddle's maximum for /events, /customers and /subscriptions
PADDLE_EVENT_RETENTION_SECONDS = 90 * 24 * 3600
REFUSED_KEY = frozenset({"invalid_token", "authentication_missing", "authentication_malformed", "forbidden"})


def retention_note(since: int, now: float) -> str | None:
    """A warning when part of the window is past what Paddle still keeps."""
    if since < now - PADDLE_EVENT_RETENTION_SECONDS:
        return "note: Paddle keeps events for 90 days; older ones cannot be read back"
    return None


def rfc3339(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class PaddleReader(ApiReader):
    max_rps: float = PADDLE_MAX_RPS

    provider = "Paddle"
    key_env = "PADDLE_API_KEY"
    key_needed = "an API key with read permission on events"
    base_env = "PADDLE_API_BASE"
    not_a_document = "without JSON"
    not_found = "not_found"

    def event_pages(
        self, since: int, until: int | None, types: list[str], *, undelivered_only: bool = False
    ) -> Iterator[list[dict[str, Any]]]:
        """Events in [since, until] of `types`, newest first, as Paddle sent them."""
        if undelivered_only:
            raise ReadError(
                "Paddle's events API has no delivery filter (Stripe's delivery_success): "
                "use `relay reconcile paddle` to find what the relay never received"
            )
        params = {"order_by": "id[DESC]", "per_page": str(PAGE_SIZE), "from": rfc3339(since)}
        if until is not None:
            params["to"] = rfc3339(until + 1)  # `to` is RFC 3339; the second `until` itself is kept below
        if types:
            params["event_type"] = ",".join(types)
        for page in self.pages("events", params):
            kept, past = [], False
            for event in page:
                at = iso_seconds(event.get("occurred_at"))
                if at is not None and at < since:
                    past = True  # newest first: everything after this one is older still
                    continue
                if at is not None and until is not None and at > until:
                    continue
                if types and event.get("event_type") not in types:
                    continue
                kept.append(event)
            if kept:
                yield kept
            if past:
                return

    def pages(self, resource: str, params: dict[str, str], after: str | None = None) -> Iterator[list[dict[str, Any]]]:
        """Each page of a Paddle list endpoint (events, customers, subscriptions), from after `after`,
        following meta.pagination.next until has_more is false."""
        query = urlencode({"per_page": str(PAGE_SIZE), **params, **({"after": after} if after else {})})
        while True:
            body = self._get(f"{self.api_base}/{resource}?{query}")
            data, pagination = body.get("data") or [], (body.get("meta") or {}).get("pagination") or {}
            if data:
                yield data
            next_url = pagination.get("next")
            if not pagination.get("has_more") or not data or not next_url:
                return
            # The filters and cursor of `next`, on the configured base (its host may be Paddle's own).
            query = urlencode(parse_qsl(urlsplit(next_url).query, keep_blank_values=True))

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", "Accept": "application/json"}

    @staticmethod
    def _error(raw: bytes) -> tuple[str | None, str | None]:
        """Paddle's error envelope: {"error": {"type", "code", "detail", "documentation_url"}}."""
        try:
            error = json.loads(raw).get("error") or {}
        except (ValueError, AttributeError):
            return None, None
        code, detail = error.get("code"), error.get("detail")
        return (code if isinstance(code, str) else None), (detail[:200] if isinstance(detail, str) else None)

    def _refusal(self, status: int, label: str | None) -> str | None:
        if status not in (401, 403) and label not in REFUSED_KEY:
            return None
        return (
            f"Paddle refused PADDLE_API_KEY ({status} {label or 'unauthorized'}): "
            "use a key with read permission on events, for this environment (live or sandbox)"
        )
