"""Paddle Billing: its signature (`Paddle-Signature`) and its notification envelope. Pure: no I/O.

`Paddle-Signature: ts=<unix>;h1=<hex>[;h1=...]`, HMAC-SHA256 over `"{ts}:{body}"` with the
endpoint secret as-is; older than the tolerance (Paddle's SDKs: 5 s): expired.
"""

from __future__ import annotations

from collections.abc import Mapping as Headers
from dataclasses import dataclass
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from service.sources.base import Described, Envelope, SourceSettings, SourceSpec, iso_seconds, text_or_none
from service.sources.paddle.extract import EXTRACTORS, PADDLE_ID
from service.sources.signing import hmac_hex, verify_keyed_header

NAME = "paddle"
HEADER = "Paddle-Signature"
DEFAULT_TOLERANCE_SECONDS = 5  # what Paddle's SDKs enforce by default


class EventSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    event_id = fields.String(required=True, validate=PADDLE_ID)
    event_type = fields.String(required=True, validate=validate.Length(min=1, max=255))
    occurred_at = fields.AwareDateTime(required=True)
    data = fields.Dict(required=True)


_EVENT_SCHEMA = EventSchema()


def verify_signature(
    payload: bytes,
    header: str | None,
    secrets: tuple[str, ...] | list[str],
    *,
    tolerance: int,
    now: float | None = None,
) -> int:
    return verify_keyed_header(
        payload,
        header,
        secrets,
        name=HEADER,
        separator=";",
        keys=("ts", "h1"),
        joiner=b":",
        tolerance=tolerance,
        now=now,
    )


def sign(payload: bytes, secret: str, timestamp: int) -> dict[str, str]:
    return {HEADER: f"ts={timestamp};h1={hmac_hex(secret, f'{timestamp}:'.encode() + payload)}"}


def read_envelope(payload: Any) -> Envelope:
    if not isinstance(payload, dict):
        raise ValidationError({"_schema": ["A Paddle notification must be a JSON object."]})
    event = _EVENT_SCHEMA.load(payload)
    return Envelope(
        event["event_id"], event["event_type"], int(event["occurred_at"].timestamp()), event["data"], ("data",)
    )


@dataclass(frozen=True)
class PaddleSource:
    settings: SourceSettings
    name: str = NAME
    title: str = "Paddle Billing"

    def verify(self, raw: bytes, headers: Headers[str, str]) -> None:
        verify_signature(raw, headers.get(HEADER), self.settings.secrets, tolerance=self.settings.tolerance_seconds)

    def envelope(self, payload: Any, headers: Headers[str, str]) -> Envelope:
        return read_envelope(payload)

    def describe(self, payload: Any, headers: Headers[str, str]) -> Described:
        envelope = payload if isinstance(payload, dict) else {}
        return Described(
            text_or_none(envelope.get("event_id")),
            text_or_none(envelope.get("event_type")),
            iso_seconds(envelope.get("occurred_at")),
        )


# Paddle Billing's event types, as its official Python SDK names them (paddle_billing EventTypeName).
EVENT_TYPES = frozenset(
    f"{entity}.{action}"
    for entity, actions in {
        "address": "created imported updated",
        "adjustment": "created updated",
        "business": "created imported updated",
        "customer": "created imported updated",
        "discount": "created imported updated",
        "invoice": "canceled created issued overdue paid scheduled",
        "payment_method": "deleted saved",
        "payout": "created paid",
        "price": "created imported updated",
        "product": "created imported updated",
        "report": "created updated",
        "subscription": "activated canceled created imported past_due paused resumed trialing updated",
        "transaction": "billed canceled completed created paid past_due payment_failed ready revised updated",
    }.items()
    for action in actions.split()
)


SPEC = SourceSpec(
    name=NAME,
    title="Paddle",
    secret_env="PADDLE_WEBHOOK_SECRETS",  # noqa: S106 - the variable's name, not a secret
    build=PaddleSource,
    sign=sign,
    event_schema=EventSchema,
    signature_headers=((HEADER, "ts=<unix time>;h1=<hex HMAC-SHA256>"),),
    extractors=EXTRACTORS,
    documented_types=lambda: EVENT_TYPES,
    tolerance_env="PADDLE_TOLERANCE_SECONDS",
    default_tolerance=DEFAULT_TOLERANCE_SECONDS,
)
