"""A Paddle Billing notification -> one normalized user update. Pure: no I/O."""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from service.mapping import Mapping
from service.normalize import Envelope, Normalized, normalize_mapped
from service.paddle_extract import PADDLE_ID

SOURCE = "paddle"


class EventSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    event_id = fields.String(required=True, validate=PADDLE_ID)
    event_type = fields.String(required=True, validate=validate.Length(min=1, max=255))
    occurred_at = fields.AwareDateTime(required=True)
    data = fields.Dict(required=True)


_EVENT_SCHEMA = EventSchema()


def normalize_event(payload: Any, mapping: Mapping, identity_key: str) -> Normalized:
    if not isinstance(payload, dict):
        raise ValidationError({"_schema": ["A Paddle notification must be a JSON object."]})
    event = _EVENT_SCHEMA.load(payload)
    envelope = Envelope(
        event["event_id"], event["event_type"], int(event["occurred_at"].timestamp()), event["data"], ("data",)
    )
    return normalize_mapped(SOURCE, envelope, mapping, identity_key)
