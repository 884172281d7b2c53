"""Admin HTTP API for the dead-letter queue: `Authorization: Bearer $RELAY_ADMIN_TOKEN`.

Disabled (404, `admin_disabled`) when no token is configured. Views only translate: the
operations are plain functions in service.operator.

Item and user ids are `<path:...>`: a WSGI server decodes %2F to "/" before routing, and user ids
may hold "/" ("org/42"), as may the event id of a dead letter a backfill filed. No route is made
ambiguous: `POST /dlq/replay` (bulk) is matched before `POST /dlq/<id>/replay` (an id ending in
"/replay" is still its own: `POST /dlq/x/replay/replay`), and `/users/<id>/trace` is the only route
under /users. A user id may also start with "/" ("/abc": `/users//abc/trace`): that route neither merges
slashes (Werkzeug would redirect to user "abc"'s trace) nor refuses a leading one (UserIdConverter).
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from flask import Blueprint, Response, current_app, request
from werkzeug.routing import PathConverter

from service.core.dead_letter import TIME_FIELDS
from service.core.errors import AdminDisabled, Conflict, InvalidRequest, NotFound, Unauthorized, load_request
from service.core.times import shown
from service.operator import GONE, REFUSALS, REPLAYED, Operator
from service.store.trace import read_trace
from service.web.schemas import DlqBulkRequest, DlqFilterSchema, DlqListQuery

bp = Blueprint("admin", __name__, url_prefix="/admin")


def _operator() -> Operator:
    """The operator of the dead-letter queue named by `?destination=` (default: the first configured)."""
    operators: dict[str, Operator] = current_app.extensions["relay.operators"]
    destination = request.args.get("destination", next(iter(operators)))  # given empty: refused, as GET /dlq does
    if destination not in operators:
        raise InvalidRequest(f"unknown destination {destination!r}; configured: {', '.join(operators)}")
    return operators[destination]


@bp.before_request
def _authenticate() -> None:
    token: str = current_app.extensions["relay.admin_token"]
    if not token:
        raise AdminDisabled("the admin API is disabled: set RELAY_ADMIN_TOKEN to enable it")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        raise Unauthorized("a valid 'Authorization: Bearer <RELAY_ADMIN_TOKEN>' header is required")


def _load(schema: DlqFilterSchema, data: Any) -> dict[str, Any]:
    loaded: dict[str, Any] = load_request(schema, data)
    return loaded


def _json_object() -> dict[str, Any]:
    """An empty body means no filters; anything else must be a JSON object (never guessed)."""
    if not request.get_data():
        return {}
    try:
        body = json.loads(request.get_data())
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser can follow
        raise InvalidRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def _item(item_id: str) -> dict[str, Any]:
    item = _operator().dlq.get(item_id)
    if item is None:
        raise NotFound(f"no dead-letter item {item_id!r}")
    return item


@bp.get("/dlq")
def list_dlq() -> dict[str, Any]:
    schema = DlqListQuery()
    query = _load(schema, request.args.to_dict())
    dlq = _operator().dlq
    dlq.trim()
    items, total = dlq.matching(schema.to_filter(query), offset=query["offset"], limit=query["limit"])
    shown_items = [shown(item, TIME_FIELDS) for item in items]
    return {"items": shown_items, "total": total, "offset": query["offset"], "limit": query["limit"]}


@bp.get("/dlq/<path:item_id>")
def show_dlq(item_id: str) -> dict[str, Any]:
    return shown(_item(item_id), TIME_FIELDS)


@bp.delete("/dlq/<path:item_id>")
def delete_dlq(item_id: str) -> Response:
    if not _operator().dlq.delete(item_id):
        raise NotFound(f"no dead-letter item {item_id!r}")
    return Response(status=204)


@bp.post("/dlq/<path:item_id>/replay")
def replay_one(item_id: str) -> tuple[dict[str, Any], int]:
    replay = _operator().replay_explained(_item(item_id))
    if replay.outcome == REPLAYED:
        return {"id": item_id, "status": replay.outcome}, 202
    if replay.outcome == GONE:
        raise NotFound(f"no dead-letter item {item_id!r}")
    raise Conflict(replay.outcome, REFUSALS[replay.outcome], details=replay.details)


@bp.post("/dlq/replay")
def replay_bulk() -> tuple[dict[str, Any], int]:
    schema = DlqBulkRequest()
    body = _load(schema, _json_object())
    if not body["all"] and not any(body.get(name) for name in ("reason", "event_type", "user_id", "since", "until")):
        raise InvalidRequest('give at least one filter, or {"all": true} to replay every item')
    flt = schema.to_filter(body)
    if "batch" in body:
        return _operator().replay_batch(flt, batch=body["batch"], cursor=body.get("cursor")), 202
    result = _operator().replay_matching(flt, dry_run=body["dry_run"], limit=body.get("limit"))
    return result, 200 if body["dry_run"] else 202


class UserIdConverter(PathConverter):
    """Any user id intake accepts, "/" anywhere in it (Werkzeug's `path` refuses a leading one)."""

    regex = ".+?"
    part_isolating = False  # it spans "/" (Werkzeug guesses from the regex, which names none)


@bp.get("/users/<user_id:user_id>/trace", merge_slashes=False)
def user_trace(user_id: str) -> dict[str, Any]:
    """The user's latest deliveries and dead letters at the destination, newest first."""
    store = _operator().store
    entries = [shown(entry, ("at",)) for entry in read_trace(store.redis, store.keys, user_id)]
    return {"user_id": user_id, "destination": store.keys.destination, "entries": entries}
