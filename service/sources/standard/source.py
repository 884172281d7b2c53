"""Standard Webhooks: its signature and the generic `user.updated` event. Pure: no I/O.

`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64> [v1,...]`, HMAC-SHA256 over
`"{id}.{timestamp}.{body}"` with the base64-decoded `whsec_` secret as the key. Outside the
tolerance either way (too old or too new): expired. The event says what to set itself
(schemas.py): no mapping applies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping as Headers
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from marshmallow import ValidationError

from service.core.attributes import STANDARD_ATTRIBUTES
from service.core.errors import SignatureInvalid, SignatureMissing
from service.core.update import UserUpdate
from service.sources.base import Described, Envelope, SourceSettings, SourceSpec, iso_seconds, text_or_none
from service.sources.signing import any_match, check_age, parse_timestamp
from service.sources.standard.schemas import EVENT_TYPE, WEBHOOK_ID, EventSchema, UserUpdatedSchema

NAME = "standard"
DEFAULT_TOLERANCE_SECONDS = 300  # the Standard Webhooks reference libraries' five minutes
_EVENT_SCHEMA = EventSchema()
_USER_UPDATED_SCHEMA = UserUpdatedSchema()


def webhook_key(secret: str) -> bytes:
    """`whsec_<base64>` -> the HMAC key; ValueError when it is not that."""
    if not secret.startswith("whsec_"):
        raise ValueError("not a whsec_ secret")
    try:
        key = base64.b64decode(secret[len("whsec_") :], validate=True)
    except binascii.Error:
        raise ValueError("whsec_ secret is not base64") from None
    if not key:
        raise ValueError("whsec_ secret is empty")
    return key


def secret_problem(secret: str) -> str | None:
    try:
        webhook_key(secret)
    except ValueError as exc:
        return str(exc)
    return None


def verify_signature(
    payload: bytes,
    webhook_id: str | None,
    webhook_timestamp: str | None,
    header: str | None,
    keys: Sequence[bytes],
    *,
    tolerance: int,
    now: float | None = None,
) -> int:
    given = (("webhook-id", webhook_id), ("webhook-timestamp", webhook_timestamp), ("webhook-signature", header))
    missing = [name for name, value in given if not value]
    if missing:
        raise SignatureMissing(f"header(s) missing: {', '.join(missing)}")
    assert webhook_id and webhook_timestamp and header
    timestamp = parse_timestamp(webhook_timestamp, "webhook-timestamp")
    candidates = [
        value.encode("ascii", "replace")
        for version, _, value in (item.partition(",") for item in header.split())
        if version == "v1" and value
    ]
    if not candidates:
        raise SignatureInvalid("webhook-signature has no v1 signature")
    signed = f"{webhook_id}.{timestamp}.".encode() + payload
    if not any_match(signed, keys, candidates, base64.b64encode):
        raise SignatureInvalid("no webhook-signature v1 signature matches a configured secret")
    check_age(timestamp, "webhook-timestamp", tolerance, now, future=True)
    return timestamp


def sign(payload: bytes, secret: str, timestamp: int, msg_id: str | None = None) -> dict[str, str]:
    """The headers a sender sends; `msg_id` (the event id) is a new one unless given: the same id twice
    is a duplicate."""
    msg_id = msg_id or f"msg_{secrets.token_hex(12)}"
    digest = hmac.new(webhook_key(secret), f"{msg_id}.{timestamp}.".encode() + payload, hashlib.sha256).digest()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


def read_envelope(payload: Any, webhook_id: str) -> Envelope:
    """Raises marshmallow's ValidationError, with field messages, when the payload does not fit."""
    try:
        WEBHOOK_ID(webhook_id)
    except ValidationError as exc:
        raise ValidationError({"webhook-id": exc.messages}) from None
    if not isinstance(payload, dict):
        raise ValidationError({"_schema": ["A Standard Webhooks event must be a JSON object."]})
    event = _EVENT_SCHEMA.load(payload)
    event_time = int(event["timestamp"].timestamp())
    if event["type"] != EVENT_TYPE:
        return Envelope(webhook_id, event["type"], event_time, None, (), direct=True)
    data = _USER_UPDATED_SCHEMA.load(payload)["data"]
    attributes = data["attributes"]
    update = UserUpdate(
        source=NAME,
        event_id=webhook_id,
        event_type=event["type"],
        event_time=event_time,
        user_id=data["user_id"],
        customer_id=None,
        standard={k: v for k, v in attributes.items() if k in STANDARD_ATTRIBUTES},
        custom={k: v for k, v in attributes.items() if k not in STANDARD_ATTRIBUTES},
        tags=list(dict.fromkeys(data["tags"])),
    )
    return Envelope(webhook_id, event["type"], event_time, None, (), data["user_id"], direct=True, update=update)


@dataclass(frozen=True)
class StandardSource:
    settings: SourceSettings
    name: str = NAME
    title: str = "Standard Webhooks"

    @cached_property
    def keys(self) -> list[bytes]:
        """The secrets' HMAC keys, decoded once (the settings checked they decode)."""
        return [webhook_key(s) for s in self.settings.secrets]

    def verify(self, raw: bytes, headers: Headers[str, str]) -> None:
        verify_signature(
            raw,
            headers.get("webhook-id"),
            headers.get("webhook-timestamp"),
            headers.get("webhook-signature"),
            self.keys,
            tolerance=self.settings.tolerance_seconds,
        )

    def envelope(self, payload: Any, headers: Headers[str, str]) -> Envelope:
        return read_envelope(payload, headers.get("webhook-id", ""))

    def describe(self, payload: Any, headers: Headers[str, str]) -> Described:
        envelope = payload if isinstance(payload, dict) else {}
        webhook_id = headers.get("webhook-id")
        try:
            WEBHOOK_ID(webhook_id or "")
        except ValidationError:
            webhook_id = None
        return Described(webhook_id, text_or_none(envelope.get("type")), iso_seconds(envelope.get("timestamp")))


SPEC = SourceSpec(
    name=NAME,
    title="Standard Webhooks",
    secret_env="STANDARD_WEBHOOK_SECRETS",  # noqa: S106 - the variable's name, not a secret
    build=StandardSource,
    sign=sign,
    event_schema=UserUpdatedSchema,
    signature_headers=(
        ("webhook-id", "the event id (retries repeat it)"),
        ("webhook-timestamp", "unix time of the attempt"),
        ("webhook-signature", "v1,<base64 HMAC-SHA256> (space-separated, several while rotating)"),
    ),
    tolerance_env="STANDARD_WEBHOOK_TOLERANCE_SECONDS",
    default_tolerance=DEFAULT_TOLERANCE_SECONDS,
    secret_problem=secret_problem,
)
