"""A Stripe event, validated and turned into one normalized user update. Pure: no I/O."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError

from service.mapping import Mapping
from service.normalize import Envelope, Normalized, normalize_mapped
from service.stripe_schemas import EventSchema

SOURCE = "stripe"
_EVENT_SCHEMA = EventSchema()


def normalize_event(payload: Any, mapping: Mapping, identity_key: str) -> Normalized:
    """Raises marshmallow's ValidationError, with field messages, when the payload does not fit."""
    if not isinstance(payload, dict):
        raise ValidationError({"_schema": ["A Stripe event must be a JSON object."]})
    event = _EVENT_SCHEMA.load(payload)
    envelope = Envelope(event["id"], event["type"], event["created"], event["data"]["object"], ("data", "object"))
    return normalize_mapped(SOURCE, envelope, mapping, identity_key)
