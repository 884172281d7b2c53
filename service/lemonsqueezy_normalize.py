"""A Lemon Squeezy webhook -> one normalized user update. Pure: no I/O.

Lemon Squeezy sends no event id. A delivery is identified by what it reports: the event name,
the resource and the time that resource last changed (`<event>-<type>-<id>-<updated_at ms>`).
A retried delivery carries the same body, so it gets the same id and is recognised as a duplicate.
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from service.extract import identity
from service.mapping import Mapping
from service.normalize import Envelope, Normalized, normalize_mapped

SOURCE = "lemonsqueezy"
NAME = validate.Regexp(r"^[a-z0-9_-]{1,100}$", error="Must be a Lemon Squeezy name (a-z, 0-9, _ or -).")


class _Lenient(Schema):
    class Meta:
        unknown = EXCLUDE


class LemonSqueezyMetaSchema(_Lenient):
    event_name = fields.String(required=True, validate=NAME)
    custom_data = fields.Dict(keys=fields.String(), values=fields.Raw(allow_none=True), allow_none=True)


class TimesSchema(_Lenient):
    updated_at = fields.AwareDateTime(required=True)


class LemonSqueezyDataSchema(_Lenient):
    type = fields.String(required=True, validate=NAME)
    id = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z0-9_-]{1,100}$"))
    attributes = fields.Dict(required=True)


class EventSchema(_Lenient):
    meta = fields.Nested(LemonSqueezyMetaSchema, required=True)
    data = fields.Nested(LemonSqueezyDataSchema, required=True)


_EVENT_SCHEMA = EventSchema()
_TIMES_SCHEMA = TimesSchema()


def event_id(event_name: str, data_type: str, data_id: str, updated_at_ms: int) -> str:
    return f"{event_name}-{data_type}-{data_id}-{updated_at_ms}"


def normalize_event(payload: Any, mapping: Mapping, identity_key: str) -> Normalized:
    if not isinstance(payload, dict):
        raise ValidationError({"_schema": ["A Lemon Squeezy webhook must be a JSON object."]})
    event = _EVENT_SCHEMA.load(payload)
    meta, data = event["meta"], event["data"]
    try:
        updated_at = _TIMES_SCHEMA.load(data["attributes"])["updated_at"]
    except ValidationError as exc:
        raise ValidationError({"data": {"attributes": exc.messages}}) from None
    envelope = Envelope(
        event_id(meta["event_name"], data["type"], data["id"], int(updated_at.timestamp() * 1000)),
        meta["event_name"],
        int(updated_at.timestamp()),
        {**data["attributes"], "id": data["id"]},
        ("data", "attributes"),
        user_id=identity(meta.get("custom_data"), identity_key),
    )
    return normalize_mapped(SOURCE, envelope, mapping, identity_key)
