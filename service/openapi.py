"""The OpenAPI 3 document of every endpoint, built with apispec from the marshmallow schemas."""

from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema

from service import api_schemas as s
from service import lemonsqueezy_normalize, paddle_normalize, standard_events, stripe_schemas
from service.api_schemas import DESTINATION_HELP
from service.keys import DESTINATIONS
from service.status import version


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": "ErrorBody"}}}


def _ok(description: str, schema: str | None) -> dict[str, Any]:
    if schema is None:
        return {"description": description}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _admin(operation: dict[str, Any]) -> dict[str, Any]:
    operation.setdefault("responses", {}).update(
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


# source, title, signature headers, payload schema
WEBHOOKS: list[tuple[str, str, list[tuple[str, str]], type[Schema]]] = [
    ("stripe", "Stripe", [("Stripe-Signature", "t=<unix time>,v1=<hex HMAC-SHA256>")], stripe_schemas.EventSchema),
    (
        "standard",
        "Standard Webhooks",
        [
            ("webhook-id", "the event id (retries repeat it)"),
            ("webhook-timestamp", "unix time of the attempt"),
            ("webhook-signature", "v1,<base64 HMAC-SHA256> (space-separated, several while rotating)"),
        ],
        standard_events.UserUpdatedSchema,
    ),
    ("paddle", "Paddle", [("Paddle-Signature", "ts=<unix time>;h1=<hex HMAC-SHA256>")], paddle_normalize.EventSchema),
    (
        "lemonsqueezy",
        "Lemon Squeezy",
        [("X-Signature", "hex HMAC-SHA256 of the body")],
        lemonsqueezy_normalize.EventSchema,
    ),
]


def _webhook(title: str, headers: list[tuple[str, str]], schema: str) -> dict[str, Any]:
    return {
        "tags": ["webhooks"],
        "summary": f"Receive a {title} webhook",
        "parameters": [
            {"in": "header", "name": name, "required": True, "schema": {"type": "string"}, "description": text}
            for name, text in headers
        ],
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
        "responses": {
            "202": _ok("verified, valid and durably queued", "WebhookAnswer"),
            "200": _ok("already accepted (`duplicate`) or not mapped (`ignored`)", "WebhookAnswer"),
            "400": _error("body is not JSON (`malformed_json`)"),
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
    ):
        spec.components.schema(schema.__name__, schema=schema)
    for source, title, headers, schema in WEBHOOKS:
        name = f"{title.replace(' ', '')}Event"
        spec.components.schema(name, schema=schema)
        spec.path(path=f"/webhooks/{source}", operations={"post": _webhook(title, headers, name)})
    unreachable = {"503": _error("Redis unreachable (`redis_unavailable`)")}
    ops = [
        ("/healthz", "Process alive (never checks Redis)", {"200": _ok("alive", "Health")}),
        ("/readyz", "Ready: Redis reachable", {"200": _ok("ready", "Health"), **unreachable}),
        ("/status", "Status for the monitoring dashboard", {"200": _ok("status", "Status"), **unreachable}),
        (
            "/metrics",
            "Prometheus metrics (text format 0.0.4)",
            {"200": {"description": "metrics", "content": {"text/plain": {}}}},
        ),
        ("/openapi.json", "This document", {"200": _ok("OpenAPI 3", None)}),
    ]
    for path, summary, responses in ops:
        spec.path(path=path, operations={"get": {"tags": ["ops"], "summary": summary, "responses": responses}})
    spec.path(
        path="/admin/dlq",
        operations={
            "get": _admin(
                {
                    "summary": "List dead-letter items, oldest failure first",
                    "parameters": [{"in": "query", "schema": s.DlqListQuery}],
                    "responses": {"200": _ok("a page", "DlqPage"), "400": _error("bad parameters (`invalid_request`)")},
                }
            )
        },
    )
    item_id = {"in": "path", "name": "item_id", "required": True, "schema": {"type": "string"}}
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
                        "409": _error("`still_invalid` or `not_mapped`"),
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
                    "requestBody": {"content": {"application/json": {"schema": s.DlqBulkRequest}}},
                    "responses": {
                        "200": _ok("dry run", "BulkAnswer"),
                        "202": _ok("queued for replay", "BulkAnswer"),
                        "400": _error("bad body (`invalid_request`)"),
                    },
                }
            )
        },
    )
    return spec.to_dict()
