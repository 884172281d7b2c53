"""The OpenAPI 3 document of every endpoint, built with apispec from the marshmallow schemas."""

from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from service.core.version import version
from service.sources.registry import SOURCES
from service.web import schemas as s
from service.web.schemas import DESTINATION_HELP, DESTINATIONS


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": "ErrorBody"}}}


def _ok(description: str, schema: str | None) -> dict[str, Any]:
    if schema is None:
        return {"description": description}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _admin(operation: dict[str, Any]) -> dict[str, Any]:
    responses = operation.setdefault("responses", {})
    responses.setdefault("400", _error("a `destination` not in RELAY_DESTINATIONS (`invalid_request`)"))
    responses.update(
        {
            "401": _error("missing or wrong bearer token (`unauthorized`)"),
            "404": _error("unknown item (`not_found`), or the admin API is disabled (`admin_disabled`)"),
            "503": _error("Redis unreachable (`redis_unavailable`)"),
        }
    )
    if not any(p.get("schema") is s.DlqListQuery for p in operation.get("parameters", [])):
        destination = {"in": "query", "name": "destination", "schema": {"type": "string", "enum": list(DESTINATIONS)}}
        operation["parameters"] = [*operation.get("parameters", []), {**destination, "description": DESTINATION_HELP}]
    return {**operation, "tags": ["admin"], "security": [{"adminToken": []}]}


def _path_id(name: str, what: str, *, leading_slash: bool = False) -> dict[str, Any]:
    """An id routed with `<path:...>` (or `<user_id:...>`, which also takes a leading "/"): a "/" in it may be
    sent as it is or as %2F (decoded before routing)."""
    where = "anywhere" if leading_slash else "not as its first character"
    description = f'{what}; it may hold "/" ({where}), sent as it is or as `%2F`'
    return {"in": "path", "name": name, "required": True, "schema": {"type": "string"}, "description": description}


def _webhook(title: str, headers: tuple[tuple[str, str], ...], schema: str) -> dict[str, Any]:
    return {
        "tags": ["webhooks"],
        "summary": f"Receive a {title} webhook",
        "parameters": [
            {"in": "header", "name": name, "required": True, "schema": {"type": "string"}, "description": text}
            for name, text in headers
        ],
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
        "responses": {
            "202": _ok(
                "verified, valid and durably queued (`accepted`), or kept in the dead-letter queue because "
                "its customer is mapped to another user (`identity_conflict`) or it names no user and no "
                "customer (`unresolved_identity`)",
                "WebhookAnswer",
            ),
            "200": _ok("already accepted (`duplicate`) or not mapped (`ignored`)", "WebhookAnswer"),
            "400": _error(
                "body not JSON or not UTF-8 (`malformed_json`), not readable HTTP (`malformed_request`), or "
                "shorter than its Content-Length or not all there within 5 s (`incomplete_body`)"
            ),
            "401": _error("`signature_missing`, `signature_invalid` or `signature_expired`"),
            "404": _error("the source has no secret configured (`source_not_configured`)"),
            "413": _error("body over 1 MiB (`payload_too_large`)"),
            "415": _error("not JSON (`unsupported_media_type`)"),
            "422": _error("does not fit the schema (`invalid_payload`); kept in the dead-letter queue"),
            "503": _error("Redis unreachable (`redis_unavailable`); the sender retries"),
        },
    }


def build_spec() -> dict[str, Any]:
    spec = APISpec(
        title="relay",
        version=version(),
        openapi_version="3.0.3",
        info={"description": "Billing webhooks in, User.com user updates out."},
        plugins=[MarshmallowPlugin()],
    )
    spec.components.security_scheme("adminToken", {"type": "http", "scheme": "bearer"})
    for schema in (
        s.ErrorBody,
        s.WebhookAnswer,
        s.Health,
        s.DlqItem,
        s.DlqPage,
        s.ReplayAnswer,
        s.BulkAnswer,
        s.Status,
        s.UserTrace,
    ):
        spec.components.schema(schema.__name__, schema=schema)
    for source in SOURCES.values():
        name = f"{source.title.replace(' ', '')}Event"
        spec.components.schema(name, schema=source.event_schema)
        spec.path(
            path=f"/webhooks/{source.name}",
            operations={"post": _webhook(source.title, source.signature_headers, name)},
        )
    unreachable = {"503": _error("Redis unreachable (`redis_unavailable`)")}
    ops = [
        ("/healthz", "Process alive (never checks Redis)", {"200": _ok("alive", "Health")}),
        (
            "/readyz",
            "Ready: Redis reachable (and honouring RELAY_DURABLE_ACK)",
            {"200": _ok("ready", "Health"), **unreachable},
        ),
        ("/status", "Status for the monitoring dashboard", {"200": _ok("status", "Status"), **unreachable}),
        (
            "/metrics",
            "Prometheus metrics (text format 0.0.4)",
            {"200": {"description": "metrics", "content": {"text/plain": {}}}},
        ),
        ("/openapi.json", "This document", {"200": _ok("OpenAPI 3", None)}),
    ]
    ops.append(("/", "Where to go: the console, /status, /metrics, /openapi.json", {"200": _ok("links", None)}))
    ops.append(("/console", "The operator's console (HTML; signs in with the admin token)", {"200": _ok("HTML", None)}))
    ops.append(
        (
            "/console/{name}",
            "The console's static files (JS, CSS)",
            {"200": _ok("the file", None), "404": _error("no such file (`not_found`)")},
        )
    )
    name = [_path_id("name", "the file's name (`console.js`)")]
    for path, summary, responses in ops:
        operation = {"tags": ["ops"], "summary": summary, "responses": responses}
        spec.path(path=path, operations={"get": {**operation, **({"parameters": name} if "{name}" in path else {})}})
    spec.path(
        path="/admin/dlq",
        operations={
            "get": _admin(
                {
                    "summary": "List dead-letter items, oldest failure first",
                    "description": "Reads the page's items only: with no filter but times, `total` is the index's; "
                    "with a reason only, its count by reason. `event_type` or `user_id` scans the queue a page at a "
                    "time. Applies retention first (1,000 items a Redis script call).",
                    "parameters": [{"in": "query", "schema": s.DlqListQuery}],
                    "responses": {"200": _ok("a page", "DlqPage"), "400": _error("bad parameters (`invalid_request`)")},
                }
            )
        },
    )
    item_id = _path_id("item_id", "the item's id, `<source>-<event id>` (`stripe-evt_1`)")
    spec.path(
        path="/admin/dlq/{item_id}",
        operations={
            "get": _admin(
                {
                    "summary": "One dead-letter item",
                    "parameters": [item_id],
                    "responses": {"200": _ok("the item", "DlqItem")},
                }
            ),
            "delete": _admin(
                {"summary": "Delete one item", "parameters": [item_id], "responses": {"204": _ok("deleted", None)}}
            ),
        },
    )
    spec.path(
        path="/admin/dlq/{item_id}/replay",
        operations={
            "post": _admin(
                {
                    "summary": "Replay one item on the replay lane",
                    "parameters": [item_id],
                    "responses": {
                        "202": _ok("queued for replay", "ReplayAnswer"),
                        "409": _error("`still_invalid`, `not_mapped` or `unresolved_identity`"),
                    },
                }
            )
        },
    )
    spec.path(
        path="/admin/dlq/replay",
        operations={
            "post": _admin(
                {
                    "summary": "Replay every item matching the filters (dry_run counts first)",
                    "description": "A dry run only counts: with no filter, or a reason only, no item is read. "
                    "Otherwise the queue is read and replayed a page at a time, oldest first, and the answer "
                    "comes once every selected item is queued. The replay takes what was in the queue when it "
                    "began: an item dead-lettered since (a new one, or one it replayed that failed again) is left "
                    "for the next. With `batch`, a replay is made of short requests, each taking at most `batch` "
                    "items and answering a `cursor` for the next (null when done): together they take what one "
                    "call would, each item once (the ids given are kept in Redis until the last batch, or for an "
                    "hour after a batch when the replay stops part-way; a cursor of a replay done or older than "
                    "that is refused, and starting again is safe).",
                    "requestBody": {"content": {"application/json": {"schema": s.DlqBulkRequest}}},
                    "responses": {
                        "200": _ok("dry run", "BulkAnswer"),
                        "202": _ok("queued for replay", "BulkAnswer"),
                        "400": _error(
                            "bad body, or neither a filter nor `all: true`, or a cursor this API did not give, made "
                            "for other filters, or expired (`invalid_request`)"
                        ),
                    },
                }
            )
        },
    )
    user_id = _path_id("user_id", "the user id (`u_42`, `org/42`, `/42`)", leading_slash=True)
    spec.path(
        path="/admin/users/{user_id}/trace",
        operations={
            "get": _admin(
                {
                    "summary": "A user's latest deliveries and dead letters at a destination, newest first "
                    "(RELAY_TRACE_PER_USER, RELAY_TRACE_TTL_DAYS)",
                    "parameters": [user_id],
                    "responses": {"200": _ok("the trace (empty when none is kept)", "UserTrace")},
                }
            )
        },
    )
    return spec.to_dict()
