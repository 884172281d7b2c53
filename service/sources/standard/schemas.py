"""The generic user-update event, posted by any internal system over Standard Webhooks.

    webhook-id: msg_2KWPBgLlAfxdpx2AI54pPJ85f4W     (the event id: retries repeat it)
    {
      "type": "user.updated",
      "timestamp": "2026-11-23T10:00:00Z",          (when it happened: last writer wins by it)
      "data": {
        "user_id": "u_42",                           (your id for the user, required)
        "attributes": {"email": "ada@example.com", "first_name": "Ada", "plan": "pro"},
        "tags": ["beta"]
      }
    }

Attributes named like a User.com standard attribute are sent as one; any other name (a-z,
0-9, _) is a custom attribute. Values are strings, numbers or booleans. Other event types are
answered "ignored". Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates

from service.core.attributes import (
    CUSTOM_ATTRIBUTE_NAME,
    E164,
    EMAIL,
    NAME_MAX_LENGTH,
    RESERVED_KEYS,
    STANDARD_ATTRIBUTES,
)
from service.core.update import EVENT_ID, EVENT_ID_RULE, user_id_problem

EVENT_TYPE = "user.updated"
WEBHOOK_ID = validate.Regexp(EVENT_ID, error=f"webhook-id must be {EVENT_ID_RULE}")


class Scalar(fields.Field):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str | bool | int | float):
            return value
        raise ValidationError("Must be a string, number or boolean.")


class UserDataSchema(Schema):
    user_id = fields.String(required=True)
    attributes = fields.Dict(
        keys=fields.String(),
        # what it takes, in the OpenAPI document too: not null (nothing is cleared), an array or an object
        values=Scalar(metadata={"oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}),
        load_default=dict,
    )
    tags = fields.List(fields.String(validate=validate.Length(min=1, max=255)), load_default=list)

    @validates("user_id")
    def _check_user_id(self, user_id: str, **_: Any) -> None:
        if problem := user_id_problem(user_id):
            raise ValidationError(problem)

    @validates("attributes")
    def _check_attributes(self, attributes: dict[str, Any], **_: Any) -> None:
        errors: dict[str, list[str]] = {}
        for name, value in attributes.items():
            if name in STANDARD_ATTRIBUTES and name != "user_id":
                problem = _standard_problem(name, value)
            elif CUSTOM_ATTRIBUTE_NAME.match(name) and name not in RESERVED_KEYS:
                problem = None
            else:
                problem = (
                    "Not a User.com standard attribute nor a custom attribute name (a-z, 0-9, _; not a field "
                    "of User.com's user record such as name or created_at)."
                )
            if problem:
                errors[name] = [problem]
        if errors:
            raise ValidationError(errors)


def _standard_problem(name: str, value: Any) -> str | None:
    if name == "email" and not (isinstance(value, str) and EMAIL.match(value)):
        return "Not a valid email address."
    if name == "phone_number" and not (isinstance(value, str) and E164.match(value)):
        return "Must be an E.164 phone number, e.g. +48123456789."
    if name in ("first_name", "last_name") and not (isinstance(value, str) and len(value) <= NAME_MAX_LENGTH):
        return f"Must be a string of at most {NAME_MAX_LENGTH} characters."
    return None


class EventSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    type = fields.String(required=True, validate=validate.Length(min=1, max=255))
    timestamp = fields.AwareDateTime(required=True)
    data = fields.Dict(required=True)


class UserUpdatedSchema(EventSchema):
    """The `user.updated` event, in full."""

    data = fields.Nested(UserDataSchema, required=True)
