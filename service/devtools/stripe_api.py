"""A Stripe API double on a real socket: the list endpoints `relay backfill|sync|reconcile` read.

Faithful to Stripe's documented list semantics (https://docs.stripe.com/api/pagination):
`GET /v1/events`, `/v1/customers`, `/v1/subscriptions` answer `{"object": "list", "url", "has_more",
"data"}`, newest first; `limit` 1-100 (default 10); `starting_after` / `ending_before` cursors (an
id the filtered list does not hold, such as a deleted customer, is a 400 `resource_missing` with
that param, however often it is asked: stripe/stripe-go#1030, stripe/stripe-node#2368); `created`
exact or `created[gt|gte|lt|lte]`. Events also take `type` (`*` wildcard), `types[]` (up to 20,
not with `type`) and `delivery_success` (false: events some webhook endpoint has not
acknowledged). Subscriptions take `customer` and `status` (default: every status but canceled;
`all`: every one). A deleted customer is no longer listed; expanded, it is a stub with
`deleted: true`. Auth is `Authorization: Bearer <key>`: a missing or wrong key is a 401 in
Stripe's error shape. Queued faults answer first (e.g. 429 with Retry-After); every request is
recorded.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, request

from service.devtools.api_double import ApiDoubleState
from service.devtools.wsgi_server import BackgroundServer

MAX_LIMIT = 100
DEFAULT_LIMIT = 10
MAX_TYPES = 20
RANGE = re.compile(r"^created\[(gt|gte|lt|lte)\]$")
TYPES = re.compile(r"^types\[\d*\]$")
EXPAND = re.compile(r"^expand\[\d*\]$")
OPERATORS = {
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
}


@dataclass
class StripeApiState(ApiDoubleState):
    events: list[dict[str, Any]] = field(default_factory=list)  # in the order they happened
    undelivered: set[str] = field(default_factory=set)  # event ids some webhook endpoint never acknowledged
    customers: list[dict[str, Any]] = field(default_factory=list)
    deleted_customers: set[str] = field(default_factory=set)
    subscriptions: list[dict[str, Any]] = field(default_factory=list)
    # Called with the path of each list page built, before it is answered (tests: a change made meanwhile).
    after_page: Callable[[str], None] | None = None

    def add_event(self, event: dict[str, Any], *, delivered: bool = True) -> None:
        with self.lock:
            self.events.append(event)
            if not delivered:
                self.undelivered.add(event["id"])

    def delete_customer(self, customer_id: str) -> None:
        with self.lock:
            self.customers[:] = [c for c in self.customers if c["id"] != customer_id]
            self.deleted_customers.add(customer_id)


def _error(status: int, kind: str, message: str, code: str | None = None, param: str | None = None) -> Any:
    error = {
        "type": kind,
        "message": message,
        **({"code": code} if code else {}),
        **({"param": param} if param else {}),
    }
    return {"error": error}, status


def _newest_first(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stripe's order: newest first; among equal times, the later-created object first."""
    return [obj for _, obj in sorted(enumerate(objects), key=lambda pair: (pair[1]["created"], pair[0]), reverse=True)]


def _created_filter(args: Any) -> list[tuple[str, int]] | Any:
    conditions: list[tuple[str, int]] = []
    for name, value in args.items():
        match = RANGE.match(name)
        if name == "created":
            match_op = "eq"
        elif match:
            match_op = match.group(1)
        else:
            continue
        try:
            conditions.append((match_op, int(value)))
        except ValueError:
            return _error(400, "invalid_request_error", f"Invalid integer: {value}", "parameter_invalid_integer", name)
    return conditions


def _page(path: str, objects: list[dict[str, Any]], kind: str) -> Any:
    args = request.args
    try:
        limit = int(args.get("limit", DEFAULT_LIMIT))
    except ValueError:
        return _error(400, "invalid_request_error", "Invalid integer: limit", "parameter_invalid_integer", "limit")
    if not 1 <= limit <= MAX_LIMIT:
        return _error(
            400, "invalid_request_error", "This value must be between 1 and 100.", "parameter_invalid_integer", "limit"
        )
    conditions = _created_filter(args)
    if not isinstance(conditions, list):
        return conditions
    for op, bound in conditions:
        objects = [o for o in objects if (o["created"] == bound if op == "eq" else OPERATORS[op](o["created"], bound))]
    ordered = _newest_first(objects)
    after, before = args.get("starting_after"), args.get("ending_before")
    if after and before:
        return _error(400, "invalid_request_error", "You may only specify one of these parameters: ending_before, "
                      "starting_after.", "parameter_invalid", "starting_after")  # fmt: skip
    cursor = after or before
    if cursor:
        ids = [o["id"] for o in ordered]
        if cursor not in ids:
            param = "starting_after" if after else "ending_before"
            return _error(400, "invalid_request_error", f"No such {kind}: '{cursor}'", "resource_missing", param)
        at = ids.index(cursor)
        if after:
            rest = ordered[at + 1 :]
            data, has_more = rest[:limit], len(rest) > limit
        else:
            rest = ordered[:at]
            data, has_more = rest[-limit:], len(rest) > limit
    else:
        data, has_more = ordered[:limit], len(ordered) > limit
    return {"object": "list", "url": path, "has_more": has_more, "data": data}


def create_app(state: StripeApiState) -> Flask:
    app = Flask("stripe-api-double")

    @app.before_request
    def authenticate_and_fault() -> Any:
        state.record()
        header = request.headers.get("Authorization", "")
        if not header:
            return _error(
                401, "invalid_request_error", "You did not provide an API key. Provide it in the Authorization header "
                "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').")  # fmt: skip
        scheme, _, key = header.partition(" ")
        if scheme != "Bearer" or key != state.api_key:
            shown = f"{key[:8]}{'*' * 12}{key[-4:]}" if len(key) > 12 else "****"
            return _error(401, "invalid_request_error", f"Invalid API Key provided: {shown}")
        fault = state.next_fault()
        if fault is not None:
            status, retry_after = fault
            body, _ = (
                _error(status, "invalid_request_error", "Too many requests hit the API too quickly.", "rate_limit")
                if status == 429
                else _error(status, "api_error", "Something went wrong on Stripe's end.")
            )
            return body, status, ({"Retry-After": retry_after} if retry_after else {})
        return None

    @app.after_request
    def page_built(response: Any) -> Any:
        if state.after_page is not None and response.status_code == 200:
            state.after_page(request.path)
        return response

    @app.get("/v1/events")
    def list_events() -> Any:
        args = request.args
        types = [v for k in args for v in args.getlist(k) if TYPES.match(k)]
        one_type = args.get("type")
        if types and one_type:
            return _error(400, "invalid_request_error", "You may pass either `type` or `types`, but not both.",
                          "parameter_invalid", "types")  # fmt: skip
        if len(types) > MAX_TYPES:
            return _error(400, "invalid_request_error", "types: at most 20 event types", "parameter_invalid", "types")
        with state.lock:
            events, undelivered = list(state.events), set(state.undelivered)
        if types:
            events = [e for e in events if e["type"] in types]
        if one_type:
            events = [e for e in events if fnmatch.fnmatchcase(e["type"], one_type)]
        delivery = args.get("delivery_success")
        if delivery in ("true", "false"):
            wanted_undelivered = delivery == "false"
            events = [e for e in events if (e["id"] in undelivered) == wanted_undelivered]
        return _page("/v1/events", events, "event")

    @app.get("/v1/customers")
    def list_customers() -> Any:
        with state.lock:
            customers = list(state.customers)
        if email := request.args.get("email"):
            customers = [c for c in customers if c.get("email") == email]
        return _page("/v1/customers", customers, "customer")

    @app.get("/v1/subscriptions")
    def list_subscriptions() -> Any:
        with state.lock:
            subscriptions = list(state.subscriptions)
        if customer := request.args.get("customer"):
            subscriptions = [s for s in subscriptions if s.get("customer") == customer]
        status = request.args.get("status")
        if status is None:
            subscriptions = [s for s in subscriptions if s.get("status") != "canceled"]
        elif status != "all":
            subscriptions = [s for s in subscriptions if s.get("status") == status]
        expand = [v for k in request.args for v in request.args.getlist(k) if EXPAND.match(k)]
        if unknown := [path for path in expand if path != "data.customer"]:
            return _error(400, "invalid_request_error", f"This property cannot be expanded ({unknown[0]}).",
                          "parameter_invalid", "expand")  # fmt: skip
        if expand:
            with state.lock:
                by_id = {c: {"id": c, "object": "customer", "deleted": True} for c in state.deleted_customers}
                by_id.update({c["id"]: c for c in state.customers})
            subscriptions = [{**s, "customer": by_id.get(s["customer"], s["customer"])} for s in subscriptions]
        return _page("/v1/subscriptions", subscriptions, "subscription")

    return app


class StripeApiServer(BackgroundServer):
    def __init__(self, api_key: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = StripeApiState(api_key)
        super().__init__(create_app(self.state), host, port)
