"""From a provider's event to one normalized user update, through the mapping. Pure: no I/O.

Each source reads its own envelope (id, type, time and the object the event is about); the
mapping rule for that type names an extractor, whose schema validates the object and whose
fields the rule sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from marshmallow import ValidationError

from service.mapping import EXTRACTORS, Mapping
from service.updates import UserUpdate


@dataclass(frozen=True)
class Normalized:
    event_id: str
    event_type: str
    update: UserUpdate | None  # None: the mapping does not use this event type


@dataclass(frozen=True)
class Envelope:
    event_id: str
    event_type: str
    event_time: int  # epoch seconds
    obj: Any  # what the event is about, validated by the extractor's schema
    path: tuple[str, ...]  # where obj sits in the payload, for error messages
    user_id: str | None = None  # identity carried by the envelope rather than the object


def normalize_mapped(source: str, envelope: Envelope, mapping: Mapping, identity_key: str) -> Normalized:
    """Raises marshmallow's ValidationError, with messages at the object's place in the payload."""
    rule = mapping.rule_for(source, envelope.event_type)
    if rule is None:
        return Normalized(envelope.event_id, envelope.event_type, None)
    extractor = EXTRACTORS[source][rule.extract]
    try:
        obj = extractor.schema.load(envelope.obj)
    except ValidationError as exc:
        messages: Any = exc.messages
        for key in reversed(envelope.path):
            messages = {key: messages}
        raise ValidationError(messages) from None
    extracted = extractor.extract(obj, envelope.event_time, identity_key)
    standard, custom, tags = rule.apply(extracted)
    update = UserUpdate(
        source=source,
        event_id=envelope.event_id,
        event_type=envelope.event_type,
        event_time=envelope.event_time,
        user_id=envelope.user_id or extracted.user_id,
        customer_id=extracted.customer_id,
        standard=standard,
        custom=custom,
        tags=tags,
    )
    return Normalized(envelope.event_id, envelope.event_type, update)
