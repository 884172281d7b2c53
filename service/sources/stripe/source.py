"""Stripe: its signature (`Stripe-Signature`) and its event envelope. Pure: no I/O.

`Stripe-Signature: t=<unix>,v1=<hex>[,v1=...]`, HMAC-SHA256 over `"{t}.{body}"` with the
`whsec_...` string as the key; older than the tolerance: expired.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping as Headers
from dataclasses import dataclass
from typing import Any

from marshmallow import ValidationError

from service.sources.base import Described, Envelope, SourceSettings, SourceSpec, text_or_none
from service.sources.signing import hmac_hex, verify_keyed_header
from service.sources.stripe.extract import EXTRACTORS
from service.sources.stripe.schemas import EventSchema

NAME = "stripe"
HEADER = "Stripe-Signature"
DEFAULT_TOLERANCE_SECONDS = 300
_EVENT_SCHEMA = EventSchema()


def verify_signature(
    payload: bytes,
    header: str | None,
    secrets: tuple[str, ...] | list[str],
    *,
    tolerance: int,
    now: float | None = None,
) -> int:
    """Return the signed timestamp, or raise a SignatureError."""
    return verify_keyed_header(
        payload,
        header,
        secrets,
        name=HEADER,
        separator=",",
        keys=("t", "v1"),
        joiner=b".",
        tolerance=tolerance,
        now=now,
    )


def sign(payload: bytes, secret: str, timestamp: int) -> dict[str, str]:
    return {HEADER: f"t={timestamp},v1={hmac_hex(secret, f'{timestamp}.'.encode() + payload)}"}


def read_envelope(payload: Any) -> Envelope:
    """Raises marshmallow's ValidationError, with field messages, when the payload does not fit."""
    if not isinstance(payload, dict):
        raise ValidationError({"_schema": ["A Stripe event must be a JSON object."]})
    event = _EVENT_SCHEMA.load(payload)
    return Envelope(event["id"], event["type"], event["created"], event["data"]["object"], ("data", "object"))


@dataclass(frozen=True)
class StripeSource:
    settings: SourceSettings
    name: str = NAME
    title: str = "Stripe"

    def verify(self, raw: bytes, headers: Headers[str, str]) -> None:
        verify_signature(raw, headers.get(HEADER), self.settings.secrets, tolerance=self.settings.tolerance_seconds)

    def envelope(self, payload: Any, headers: Headers[str, str]) -> Envelope:
        return read_envelope(payload)

    def describe(self, payload: Any, headers: Headers[str, str]) -> Described:
        envelope = payload if isinstance(payload, dict) else {}
        created = envelope.get("created")
        return Described(
            text_or_none(envelope.get("id")),
            text_or_none(envelope.get("type")),
            created if isinstance(created, int) else None,
        )


def secret_problem(secret: str) -> str | None:
    if not secret.startswith("whsec_") or len(secret) <= len("whsec_"):
        return "a Stripe signing secret starts with whsec_"
    return None


def documented_types() -> frozenset[str] | None:
    """The event types of the official `stripe` package installed (its Event's `type`), read on use: it is
    large, and only a mapping's check needs it. None if a release of the package keeps them elsewhere."""
    try:
        from stripe._event import Event

        kinds = typing.get_args(typing.get_type_hints(Event)["type"])
    except (ImportError, KeyError, NameError, TypeError):  # pragma: no cover - another layout of the package
        return None
    return frozenset(kind for kind in kinds if isinstance(kind, str)) or None


SPEC = SourceSpec(
    name=NAME,
    title="Stripe",
    secret_env="STRIPE_WEBHOOK_SECRETS",  # noqa: S106 - the variable's name, not a secret
    build=StripeSource,
    sign=sign,
    event_schema=EventSchema,
    signature_headers=((HEADER, "t=<unix time>,v1=<hex HMAC-SHA256>"),),
    extractors=EXTRACTORS,
    tolerance_env="STRIPE_TOLERANCE_SECONDS",
    default_tolerance=DEFAULT_TOLERANCE_SECONDS,
    secret_problem=secret_problem,
    documented_types=documented_types,
)
