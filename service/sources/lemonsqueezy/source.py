"""Lemon Squeezy: its signature (`X-Signature`) and its webhook envelope. Pure: no I/O.

`X-Signature: <hex>`, HMAC-SHA256 over the body with the signing secret as-is (no timestamp).

Lemon Squeezy sends no event id. A delivery is identified by what it reports: the event name,
the resource and the time that resource last changed (`<event>-<type>-<id>-<updated_at ms>`).
A retried delivery carries the same body, so it gets the same id and is recognised as a duplicate.
An event `relay sync lemonsqueezy` makes of a subscription read from the API carries its own id in
`meta.relay_event_id` (`sync_<id>_<digest>`: the same for an unchanged object, whatever time it is
stamped with); Lemon Squeezy sends no such field, and a body it signed cannot be given one.

Nothing signed says when a delivery was sent, so a captured one verifies for ever. Once its id
has left the dedup memory it would be taken again: an event whose `updated_at` is older than
that memory (RELAY_DEDUP_TTL_SECONDS, the source's tolerance) is refused as expired.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping as Headers
from dataclasses import dataclass
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields

from service.core.errors import SignatureExpired, SignatureInvalid, SignatureMissing
from service.sources.base import Described, Envelope, SourceSettings, SourceSpec, WholeMatch, text_or_none
from service.sources.extraction import claimed
from service.sources.lemonsqueezy.extract import EXTRACTORS
from service.sources.signing import any_match, hex_digest, hmac_hex

NAME = "lemonsqueezy"
HEADER = "X-Signature"
NAME_RULE = WholeMatch(r"^[a-z0-9_-]{1,100}$", error="Must be a Lemon Squeezy name (a-z, 0-9, _ or -).")


class _Lenient(Schema):
    class Meta:
        unknown = EXCLUDE


class LemonSqueezyMetaSchema(_Lenient):
    event_name = fields.String(required=True, validate=NAME_RULE)
    custom_data = fields.Dict(keys=fields.String(), values=fields.Raw(allow_none=True), allow_none=True)
    relay_event_id = fields.String()  # a synced subscription's id (service/backfill/lemonsqueezy_sync.py)


class TimesSchema(_Lenient):
    updated_at = fields.AwareDateTime(required=True)


class LemonSqueezyDataSchema(_Lenient):
    type = fields.String(required=True, validate=NAME_RULE)
    id = fields.String(required=True, validate=WholeMatch(r"^[A-Za-z0-9_-]{1,100}$"))
    attributes = fields.Dict(required=True)


class EventSchema(_Lenient):
    meta = fields.Nested(LemonSqueezyMetaSchema, required=True)
    data = fields.Nested(LemonSqueezyDataSchema, required=True)


_EVENT_SCHEMA = EventSchema()
_TIMES_SCHEMA = TimesSchema()


def verify_signature(payload: bytes, header: str | None, secrets: tuple[str, ...] | list[str]) -> None:
    if not header:
        raise SignatureMissing(f"{HEADER} header is missing")
    candidate = header.strip().lower().encode("ascii", "replace")
    if not any_match(payload, [s.encode() for s in secrets], [candidate], hex_digest):
        raise SignatureInvalid(f"{HEADER} does not match a configured secret")


def sign(payload: bytes, secret: str, timestamp: int) -> dict[str, str]:
    return {HEADER: hmac_hex(secret, payload)}  # Lemon Squeezy signs no time


def event_id(event_name: str, data_type: str, data_id: str, updated_at_ms: int) -> str:
    return f"{event_name}-{data_type}-{data_id}-{updated_at_ms}"


def check_not_replayed(raw: bytes, max_age: int, now: float) -> None:
    """Refuse a signed event older than the dedup memory (max_age 0: not checked). Part of the
    signature check, as a signed time's age is for other providers: a dead-lettered event
    replayed by an operator is not checked again. A body this cannot read is left to the schema."""
    try:
        attributes = json.loads(raw)["data"]["attributes"]
        updated_at = _TIMES_SCHEMA.load(attributes)["updated_at"].timestamp()
    except (ValueError, TypeError, KeyError, IndexError, ValidationError, OverflowError, RecursionError):
        return
    if max_age > 0 and updated_at < now - max_age:
        raise SignatureExpired(
            f"Lemon Squeezy event is older than the dedup window ({max_age} s, by data.attributes.updated_at): "
            "refused as a possible replay"
        )


def read_envelope(payload: Any, identity_key: str) -> Envelope:
    if not isinstance(payload, dict):
        raise ValidationError({"_schema": ["A Lemon Squeezy webhook must be a JSON object."]})
    event = _EVENT_SCHEMA.load(payload)
    meta, data = event["meta"], event["data"]
    try:
        updated_at = _TIMES_SCHEMA.load(data["attributes"])["updated_at"]
    except ValidationError as exc:
        raise ValidationError({"data": {"attributes": exc.messages}}) from None
    return Envelope(
        meta.get("relay_event_id")
        or event_id(meta["event_name"], data["type"], data["id"], int(updated_at.timestamp() * 1000)),
        meta["event_name"],
        int(updated_at.timestamp()),
        {**data["attributes"], "id": data["id"]},
        ("data", "attributes"),
        claim=claimed("lemonsqueezy.custom_data", meta.get("custom_data"), identity_key),  # set at checkout
    )


@dataclass(frozen=True)
class LemonSqueezySource:
    settings: SourceSettings
    name: str = NAME
    title: str = "Lemon Squeezy"

    def verify(self, raw: bytes, headers: Headers[str, str]) -> None:
        verify_signature(raw, headers.get(HEADER), self.settings.secrets)
        check_not_replayed(raw, self.settings.tolerance_seconds, time.time())

    def envelope(self, payload: Any, headers: Headers[str, str]) -> Envelope:
        return read_envelope(payload, self.settings.identity_key)

    def describe(self, payload: Any, headers: Headers[str, str]) -> Described:
        envelope = payload if isinstance(payload, dict) else {}
        meta = envelope.get("meta") if isinstance(envelope.get("meta"), dict) else {}
        return Described(None, text_or_none(meta.get("event_name")), None)  # no event id without a valid body


# Lemon Squeezy's webhook event types, as its official SDK (lemonsqueezy.js, webhooks) lists them, and
# affiliate_activated, which its docs list too.
EVENT_TYPES = frozenset(
    """order_created order_refunded subscription_created subscription_updated subscription_cancelled
    subscription_resumed subscription_expired subscription_paused subscription_unpaused subscription_payment_success
    subscription_payment_failed subscription_payment_recovered subscription_payment_refunded license_key_created
    license_key_updated affiliate_activated""".split()
)


SPEC = SourceSpec(
    name=NAME,
    title="Lemon Squeezy",
    secret_env="LEMONSQUEEZY_WEBHOOK_SECRETS",  # noqa: S106 - the variable's name, not a secret
    build=LemonSqueezySource,
    sign=sign,
    event_schema=EventSchema,
    signature_headers=((HEADER, "hex HMAC-SHA256 of the body"),),
    extractors=EXTRACTORS,
    documented_types=lambda: EVENT_TYPES,
)
