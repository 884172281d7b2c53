"""A Lemon Squeezy API double on a real socket: `GET /v1/subscriptions`, what `relay sync lemonsqueezy` reads.

Faithful to Lemon Squeezy's documentation (docs.lemonsqueezy.com/api: getting-started/requests and
/responses, subscriptions) where it speaks, and marked where it does not:
- JSON:API: answers are `application/vnd.api+json`, `{"jsonapi": {"version": "1.0"}, ...}`.
- Auth: `Authorization: Bearer <key>`; without a key, or with another one: 401 and the documented error
  document `{"errors": [{"detail": "Unauthenticated.", "status": "401", "title": "Unauthorized"}]}`.
- Lists: `{"meta": {"page": {"currentPage", "from", "lastPage", "perPage", "to", "total"}}, "jsonapi",
  "links": {"first", "last", "next"?, "prev"?}, "data": [resource objects]}`; `page[number]` (default 1) and
  `page[size]` (default 10, at most 100); the links are absolute and URL-encoded (`page%5Bnumber%5D=2`),
  `next` absent on the last page, `prev` on the first. A page past the last is empty.
  Not settled by the docs, chosen here: a `page[size]` over 100 or not a positive integer (or a bad
  `page[number]`) is refused with 400 and a JSON:API error whose `source.parameter` names it (JSON:API's
  answer to a query parameter a server cannot process); subscriptions are listed newest first (by
  `created_at`, as the docs' list examples sort, `sort=-createdAt`).
- A subscription's `attributes.urls` are signed links the docs say are valid for 24 hours: made at each read
  here (`expires` a day after it), the worst case for a reader that compares objects between reads.
- An unknown path: 404 with a JSON:API error. Faults queued with `fail_next` answer first (after the key
  is checked): 429 (with `Retry-After` when given; the docs name none) or a 5xx.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from flask import Flask, request

from service.devtools.api_double import ApiDoubleState
from service.devtools.wsgi_server import BackgroundServer

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 10
JSON_API = "application/vnd.api+json"
URL_LIFETIME_SECONDS = 24 * 3600
TITLES = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests"}


@dataclass
class LemonSqueezyApiState(ApiDoubleState):
    subscriptions: list[dict[str, Any]] = field(default_factory=list)  # resource objects: type, id, attributes
    clock: Callable[[], float] = time.time  # when the `urls` are signed (tests move it on)


def _document(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Any:
    return {"jsonapi": {"version": "1.0"}, **body}, status, {"Content-Type": JSON_API, **(headers or {})}


def _error(status: int, detail: str, parameter: str | None = None, headers: dict[str, str] | None = None) -> Any:
    error: dict[str, Any] = {"detail": detail, "status": str(status), "title": TITLES.get(status, "Server Error")}
    if parameter is not None:
        error["source"] = {"parameter": parameter}
    return _document({"errors": [error]}, status, headers)


def _positive(name: str, default: int, at_most: int | None = None) -> int | None:
    raw = request.args.get(name, str(default))
    if not raw.isdigit() or int(raw) < 1 or (at_most is not None and int(raw) > at_most):
        return None
    return int(raw)


def _signed_urls(obj: dict[str, Any], now: int) -> dict[str, Any]:
    """The object with its `urls` signed anew, valid for a day from now."""
    expires = now + URL_LIFETIME_SECONDS
    signature = hashlib.sha256(f"{obj['id']}:{expires}".encode()).hexdigest()
    query = f"expires={expires}&signature={signature}"
    urls = {
        "update_payment_method": f"https://store.lemonsqueezy.com/subscription/{obj['id']}/payment-details?{query}",
        "customer_portal": f"https://store.lemonsqueezy.com/billing?{query}",
    }
    return {**obj, "attributes": {**obj["attributes"], "urls": urls}}


def list_subscriptions(state: LemonSqueezyApiState) -> Any:
    size = _positive("page[size]", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    if size is None:
        return _error(400, f"The page size must be an integer from 1 to {MAX_PAGE_SIZE}.", "page[size]")
    number = _positive("page[number]", 1)
    if number is None:
        return _error(400, "The page number must be a positive integer.", "page[number]")
    with state.lock:
        objects = sorted(state.subscriptions, key=lambda o: o["attributes"].get("created_at") or "", reverse=True)
    total, last = len(objects), max(1, -(-len(objects) // size))
    data = objects[(number - 1) * size : number * size]
    base = f"{request.host_url.rstrip('/')}{request.path}"

    def link(page: int) -> str:
        return f"{base}?{urlencode({'page[number]': page, 'page[size]': size, 'sort': '-createdAt'})}"

    links = {"first": link(1), "last": link(last)}
    if number < last:
        links["next"] = link(number + 1)
    if number > 1:
        links["prev"] = link(number - 1)
    first = (number - 1) * size + 1
    page = {"currentPage": number, "from": first if data else None, "lastPage": last, "perPage": size}
    page.update(to=first + len(data) - 1 if data else None, total=total)
    now = int(state.clock())
    return _document({"meta": {"page": page}, "links": links, "data": [_signed_urls(o, now) for o in data]})


def create_app(state: LemonSqueezyApiState) -> Flask:
    app = Flask("lemonsqueezy-api-double")

    @app.before_request
    def authenticate_and_fault() -> Any:
        state.record()
        scheme, _, key = (request.headers.get("Authorization") or "").partition(" ")
        if scheme != "Bearer" or key != state.api_key:
            return _error(401, "Unauthenticated.")
        fault = state.next_fault()
        if fault is not None:
            status, retry_after = fault
            return _error(
                status,
                TITLES.get(status, "Server Error"),
                headers=({"Retry-After": retry_after} if retry_after else None),
            )
        return None

    app.add_url_rule("/v1/subscriptions", "subscriptions", lambda: list_subscriptions(state), methods=["GET"])

    @app.errorhandler(404)
    def not_found(_exc: Exception) -> Any:
        return _error(404, "The requested resource could not be found.")

    return app


class LemonSqueezyApiServer(BackgroundServer):
    def __init__(self, api_key: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = LemonSqueezyApiState(api_key)
        super().__init__(create_app(self.state), host, port)
