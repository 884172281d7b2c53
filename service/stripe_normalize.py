"""A Stripe event, validated and turned into one normalized user update. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from marshmallow import ValidationError

from service.mapping import Mapping
from service.stripe_extract import EXTRACTORS
from service.stripe_schemas import EventSchema
from service.updates import UserUpdate

SOURCE = "stripe"
_EVENT_SCHEMA = EventSchema()


@dataclass(frozen=True)
class Normalized:
    event_id: str
    event_type: str
    update: UserUpdate | None  # None: the mapping does not use this event type


def normalize_event(payload: Any, mapping: Mapping, identity_key: str) -> Normalized:
    """Raises marshmallow's ValidationError, with field messages, when the payload does not fit."""
    if not isinstance(payload, dict):
        raise ValidationError({"_schema": ["A Stripe event must be a JSON object."]})
    event = _EVENT_SCHEMA.load(payload)
    rule = mapping.rule_for(event["type"])
    if rule is None:
        return Normalized(event["id"], event["type"], None)
    extractor = EXTRACTORS[rule.extract]
    try:
        obj = extractor.schema.load(event["data"]["object"])
    except ValidationError as exc:
        raise ValidationError({"data": {"object": exc.messages}}) from None
    extracted = extractor.extract(obj, event["created"], identity_key)
    standard, custom, tags = rule.apply(extracted)
    update = UserUpdate(
        source=SOURCE,
        event_id=event["id"],
        event_type=event["type"],
        event_time=event["created"],
        user_id=extracted.user_id,
        customer_id=extracted.customer_id,
        standard=standard,
        custom=custom,
        tags=tags,
    )
    return Normalized(event["id"], event["type"], update)
