"""marshmallow schemas of the relay's own HTTP API: request validation and the OpenAPI document."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema

from service.core.dead_letter import MAX_OFFSET, DlqFilter, reasons
from service.destinations.registry import NAMES as DESTINATIONS
from service.intake import Outcome
from service.operator import BATCH_MAX

DESTINATION_HELP = "whose dead-letter queue (default: the first of RELAY_DESTINATIONS)"

REASONS = reasons(DESTINATIONS)


class ErrorDetail(Schema):
    code = fields.String(required=True, metadata={"description": "stable, machine-readable"})
    message = fields.String(required=True)
    details = fields.Raw(metadata={"description": "field messages, for invalid_payload / invalid_request"})


class ErrorBody(Schema):
    error = fields.Nested(ErrorDetail, required=True)


class WebhookAnswer(Schema):
    status = fields.String(required=True, validate=validate.OneOf([outcome.value for outcome in Outcome]))
    event_id = fields.String(required=True)


class Health(Schema):
    status = fields.String(required=True)


def _when(description: str = "") -> fields.DateTime:
    """A time shown as ISO 8601 in UTC with a `Z`, e.g. 2026-11-29T20:10:00.123Z."""
    text = f"{description} (ISO 8601, UTC)".strip()
    return fields.DateTime(allow_none=True, metadata={"description": text})


def _unix(name: str) -> fields.Float:
    return fields.Float(allow_none=True, metadata={"description": f"`{name}` as epoch seconds, for dashboards"})


def _epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


class JsonBoolean(fields.Boolean):
    """true or false, as JSON writes them: not 1, "yes" or "true"."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class DlqFilterSchema(Schema):
    """Filters shared by listing, bulk replay and purge; times are ISO 8601 (UTC if no zone)."""

    class Meta:
        unknown = RAISE

    reason = fields.String(validate=validate.OneOf(REASONS))
    event_type = fields.String(validate=validate.Length(min=1, max=255))
    user_id = fields.String(validate=validate.Length(min=1, max=255))
    since = fields.DateTime(metadata={"description": "last failure at or after"})
    until = fields.DateTime(metadata={"description": "last failure at or before"})

    def to_filter(self, data: dict[str, Any]) -> DlqFilter:
        return DlqFilter(
            reason=data.get("reason"),
            event_type=data.get("event_type"),
            user_id=data.get("user_id"),
            since=_epoch(data.get("since")),
            until=_epoch(data.get("until")),
        )


class DlqListQuery(DlqFilterSchema):
    destination = fields.String(validate=validate.OneOf(DESTINATIONS), metadata={"description": DESTINATION_HELP})
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_OFFSET))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


class DlqBulkRequest(DlqFilterSchema):
    """At least one filter, or `all: true`: an empty body never replays the whole queue."""

    # JSON's own types only: "yes" or 1 must not stand for true (all: true replays the whole queue), nor 1.5 for 1.
    all = JsonBoolean(load_default=False, metadata={"description": "every item (required when no filter is given)"})
    dry_run = JsonBoolean(
        load_default=False,
        metadata={"description": "only count what would be affected (no item is read with no filter or a reason only)"},
    )
    limit = fields.Integer(
        strict=True, validate=validate.Range(min=1), metadata={"description": "at most this many, oldest first"}
    )
    batch = fields.Integer(
        strict=True,
        validate=validate.Range(min=1, max=BATCH_MAX),
        metadata={
            "description": "replay in batches, each a short request: at most this many now; send the answer's "
            "`cursor` with the same filters for the next batch, until it is null"
        },
    )
    cursor = fields.String(
        allow_none=True,
        metadata={"description": "the last batch's `cursor` as given (with `batch`); null or left out: the first"},
    )

    @validates_schema
    def _batch_alone(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("cursor") is not None and "batch" not in data:
            raise ValidationError("a cursor continues a replay in batches: give `batch` with it", "cursor")
        for other in ("limit", "dry_run"):
            if "batch" in data and data.get(other):
                raise ValidationError(f"`batch` and `{other}` do not go together", "batch")


class DlqItem(Schema):
    class Meta:
        unknown = EXCLUDE

    id = fields.String(required=True)
    reason = fields.String(required=True, validate=validate.OneOf(REASONS))
    source = fields.String(required=True)
    event_type = fields.String(allow_none=True)
    event_id = fields.String(allow_none=True)
    event_time = _when("when the event happened, by its source")
    event_time_unix = _unix("event_time")
    message = fields.String()
    update = fields.Dict(allow_none=True, metadata={"description": "the normalized user update"})
    event = fields.Raw(allow_none=True, metadata={"description": "the original payload, when it was invalid"})
    user_id = fields.String(allow_none=True)
    attempts = fields.Integer()
    first_failure_at = _when()
    first_failure_at_unix = _unix("first_failure_at")
    last_failure_at = _when()
    last_failure_at_unix = _unix("last_failure_at")
    last_status = fields.Integer(allow_none=True)
    last_response = fields.String(allow_none=True, metadata={"description": "secrets removed"})
    destination = fields.String(validate=validate.OneOf(DESTINATIONS))


class DlqPage(Schema):
    items = fields.List(fields.Nested(DlqItem), required=True)
    total = fields.Integer(required=True)
    offset = fields.Integer(required=True)
    limit = fields.Integer(required=True)


class ReplayAnswer(Schema):
    id = fields.String(required=True)
    status = fields.String(required=True)


class BulkAnswer(Schema):
    matched = fields.Integer(metadata={"description": "not in a batch's answer"})
    selected = fields.Integer(required=True)
    dry_run = fields.Boolean(required=True)
    outcomes = fields.Dict(keys=fields.String(), values=fields.Integer())
    cursor = fields.String(
        allow_none=True, metadata={"description": "a batch's answer only: send it for the next batch; null: done"}
    )


class Lane(Schema):
    depth = fields.Integer(required=True, metadata={"description": "jobs ready to run"})
    scheduled = fields.Integer(required=True, metadata={"description": "retries waiting for their time"})
    pending = fields.Integer(required=True, metadata={"description": "updates not yet settled"})
    oldest_pending_age_seconds = fields.Float(allow_none=True)


class Limiter(Schema):
    rate_limit_per_second = fields.Float(required=True)
    burst = fields.Float(required=True)
    max_in_flight = fields.Float(required=True)
    in_flight = fields.Integer(required=True)
    effective_rate_per_second = fields.Float(required=True, metadata={"description": "lowered by 429s (AIMD)"})
    paused_until = _when("end of a 429 pause, while one lasts")
    paused_until_unix = _unix("paused_until")
    last_429_at = _when()
    last_429_at_unix = _unix("last_429_at")


class DestinationStatus(Schema):
    lanes = fields.Dict(keys=fields.String(), values=fields.Nested(Lane))
    ledger = fields.Dict(keys=fields.String(), values=fields.Integer())
    dlq = fields.Dict()
    limiter = fields.Nested(Limiter)
    workers = fields.Dict()
    last_delivery_at = _when()
    last_delivery_at_unix = _unix("last_delivery_at")


class Status(Schema):
    version = fields.String(required=True)
    time = fields.DateTime(required=True, metadata={"description": "when this document was read (ISO 8601, UTC)"})
    time_unix = fields.Float(required=True, metadata={"description": "`time` as epoch seconds"})
    destinations = fields.Dict(keys=fields.String(), values=fields.Nested(DestinationStatus))
    reconcile = fields.Dict(
        metadata={"description": "per source: the last reconcile run (at, since, until, missing, healed), or null"}
    )


class TraceEntry(Schema):
    kind = fields.String(required=True, validate=validate.OneOf(["delivery", "dead_letter"]))
    at = fields.DateTime(required=True, metadata={"description": "ISO 8601, UTC"})
    at_unix = fields.Float(required=True, metadata={"description": "`at` as epoch seconds"})
    destination = fields.String(required=True)
    user_id = fields.String(required=True)
    event_ids = fields.List(fields.String(), metadata={"description": "the events merged into this delivery"})
    endpoint = fields.String(allow_none=True, metadata={"description": "last call, e.g. PUT /users/:id/"})
    status = fields.Integer(allow_none=True, metadata={"description": "its HTTP status"})
    attributes = fields.Dict(metadata={"description": "attributes sent (long values cut)"})
    attributes_left_out = fields.Integer(metadata={"description": "attributes left out to keep the entry small"})
    tags = fields.List(fields.String())
    dropped = fields.List(fields.Dict(), metadata={"description": "values dropped by a rule: {name, reason}"})
    dead_letter_id = fields.String(metadata={"description": "dead letters: the item's id"})
    reason = fields.String(metadata={"description": "dead letters: why"})


class UserTrace(Schema):
    user_id = fields.String(required=True)
    destination = fields.String(required=True)
    entries = fields.List(fields.Nested(TraceEntry), required=True, metadata={"description": "newest first"})
