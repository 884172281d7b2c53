"""A Paddle Billing API double on a real socket: `GET /events`, `/customers`, `/subscriptions`, what
`relay backfill|reconcile|sync paddle` read.

Faithful to Paddle's documented behaviour (developer.paddle.com/api-reference: about/pagination,
about/authentication, about/errors, about/rate-limiting, events/list-events):
- Auth: `Authorization: Bearer <key>`. No header: 403 `authentication_missing`; not `Bearer <key>`:
  403 `authentication_malformed`; a wrong key: 403 `invalid_token`. Paddle answers 403, not 401.
- Errors: `{"error": {"type", "code", "detail", "documentation_url"}, "meta": {"request_id"}}`;
  an unknown path is a 404 `not_found`; queued faults answer first (429 `too_many_requests` with
  Retry-After, or a 5xx `internal_error`).
- Lists: `{"data": [...], "meta": {"request_id", "pagination": {"per_page", "next", "has_more",
  "estimated_total"}}}`. `per_page` defaults to 50; above the maximum (200) Paddle returns the
  maximum; not a positive integer: 400 `invalid_field`. `order_by` is `id[ASC]` (the default) or
  `id[DESC]`, anything else 400. `after` is a cursor: the entities after that id in the chosen
  order, not including it. `next` is always returned: the request's own query with `after` set to
  the page's last id. Event ids sort by time (Paddle ids are ULIDs).
- Events: `event_type` (comma-separated) and `from` / `to` (RFC 3339, inclusive) on `occurred_at`.
  The docs state no default order for events: id[ASC] here; the reader always sends id[DESC].
- Customers and subscriptions: `status` (comma-separated); customers default to `active` (Paddle's
  default scope), subscriptions to every status.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from flask import Flask, request

from service.devtools.api_double import ApiDoubleState
from service.devtools.wsgi_server import BackgroundServer

MAX_PER_PAGE = 200
DEFAULT_PER_PAGE = 50
ORDERS = {"id[ASC]": False, "id[DESC]": True}
DOCS = "https://developer.paddle.com/errors/shared/"
RATE_LIMITED = (
    "IP address exceeded the allowed rate limit. Retry after the number of seconds in the Retry-After header."
)


@dataclass
class PaddleApiState(ApiDoubleState):
    events: list[dict[str, Any]] = field(default_factory=list)
    customers: list[dict[str, Any]] = field(default_factory=list)
    subscriptions: list[dict[str, Any]] = field(default_factory=list)

    def add_event(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.events.append(event)


def _error(status: int, kind: str, code: str, detail: str, **extra: Any) -> Any:
    error = {"type": kind, "code": code, "detail": detail, "documentation_url": DOCS + code, **extra}
    return {"error": error, "meta": {"request_id": str(uuid.uuid4())}}, status


def _invalid(name: str, message: str) -> Any:
    errors = [{"field": name, "message": message}]
    return _error(400, "request_error", "invalid_field", "Invalid request.", errors=errors)


def _moment(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _page(resource: str, objects: list[dict[str, Any]], key: str) -> Any:
    """Paddle's paging over `objects` (already filtered): per_page, order_by=id, the `after` cursor."""
    args = request.args
    raw_per_page = args.get("per_page", str(DEFAULT_PER_PAGE))
    if not raw_per_page.isdigit() or int(raw_per_page) < 1:
        return _invalid("per_page", "must be a positive integer")
    per_page = min(int(raw_per_page), MAX_PER_PAGE)
    order_by = args.get("order_by", "id[ASC]")
    if order_by not in ORDERS:
        return _invalid("order_by", "must be id[ASC] or id[DESC]")
    descending = ORDERS[order_by]
    ordered = sorted(objects, key=lambda o: o[key], reverse=descending)
    total = len(ordered)
    if after := args.get("after"):
        ordered = [o for o in ordered if (o[key] < after if descending else o[key] > after)]
    data = ordered[:per_page]
    query = {k: v for k, v in args.items() if k != "after"}
    if data or after:
        query["after"] = data[-1][key] if data else after
    pagination = {
        "per_page": per_page,
        "next": f"{request.host_url.rstrip('/')}/{resource}?{urlencode(query)}",
        "has_more": len(ordered) > per_page,
        "estimated_total": total,
    }
    return {"data": data, "meta": {"request_id": str(uuid.uuid4()), "pagination": pagination}}


def list_events(state: PaddleApiState) -> Any:
    args = request.args
    bounds = {}
    for name in ("from", "to"):
        if name in args:
            if (moment := _moment(args[name])) is None:
                return _invalid(name, "must be an RFC 3339 datetime string")
            bounds[name] = moment
    with state.lock:
        events = list(state.events)
    if types := [t for t in args.get("event_type", "").split(",") if t]:
        events = [e for e in events if e["event_type"] in types]
    if "from" in bounds:
        events = [e for e in events if datetime.fromisoformat(e["occurred_at"]) >= bounds["from"]]
    if "to" in bounds:
        events = [e for e in events if datetime.fromisoformat(e["occurred_at"]) <= bounds["to"]]
    return _page("events", events, "event_id")


def list_scoped(state: PaddleApiState, resource: str, default_scope: set[str] | None) -> Any:
    """Customers: `active` unless `status` says otherwise; subscriptions: every status by default."""
    with state.lock:
        objects = list(state.customers if resource == "customers" else state.subscriptions)
    wanted = {s for s in request.args.get("status", "").split(",") if s} or default_scope
    if wanted is not None:
        objects = [o for o in objects if o.get("status") in wanted]
    return _page(resource, objects, "id")


def create_app(state: PaddleApiState) -> Flask:
    app = Flask("paddle-api-double")

    @app.before_request
    def authenticate_and_fault() -> Any:
        state.record()
        header = request.headers.get("Authorization")
        if not header:
            return _error(403, "request_error", "authentication_missing", "Authentication header missing.")
        scheme, _, key = header.partition(" ")
        if scheme != "Bearer" or not key:
            return _error(
                403, "request_error", "authentication_malformed",
                "Authentication header included, but incorrectly formatted.",
            )  # fmt: skip
        if key != state.api_key:
            return _error(403, "request_error", "invalid_token", "Invalid or revoked API key.")
        fault = state.next_fault()
        if fault is not None:
            status, retry_after = fault
            if status == 429:
                body, _ = _error(429, "api_error", "too_many_requests", RATE_LIMITED)
            else:
                body, _ = _error(status, "api_error", "internal_error", "An internal error has occurred.")
            return body, status, ({"Retry-After": retry_after} if retry_after else {})
        return None

    app.add_url_rule("/events", "list_events", lambda: list_events(state), methods=["GET"])
    app.add_url_rule("/customers", "customers", lambda: list_scoped(state, "customers", {"active"}), methods=["GET"])
    app.add_url_rule(
        "/subscriptions", "subscriptions", lambda: list_scoped(state, "subscriptions", None), methods=["GET"]
    )

    @app.errorhandler(404)
    def not_found(_exc: Exception) -> Any:
        return _error(404, "request_error", "not_found", f"Entity {request.path.strip('/')} not found.")

    @app.errorhandler(405)
    def not_implemented(_exc: Exception) -> Any:
        return _error(501, "api_error", "not_implemented", "HTTP method not recognized.")

    return app


class PaddleApiServer(BackgroundServer):
    def __init__(self, api_key: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = PaddleApiState(api_key)
        super().__init__(create_app(self.state), host, port)
