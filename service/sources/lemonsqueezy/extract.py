"""Lemon Squeezy: schemas for the `data.attributes` the relay reads, and their extractors.

Identity: the Lemon Squeezy customer id, or the user learned for it. `meta.custom_data[RELAY_IDENTITY_KEY]`
(checkout custom data, read by the envelope) can be set by the buyer: it names the user only when
RELAY_TRUSTED_IDENTITY_FIELDS lists `lemonsqueezy.custom_data`. Amounts are integers in the currency's smallest unit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from marshmallow import EXCLUDE, Schema, fields

from service.sources.extraction import (
    Extracted,
    Extractor,
    email_or_none,
    iso_utc,
    make_extractor,
    name_cleared,
    split_name,
    to_major,
)


class _Attributes(Schema):
    class Meta:
        unknown = EXCLUDE

    id = fields.String(required=True)  # data.id, put beside the attributes by the envelope
    customer_id = fields.Integer(strict=True, allow_none=True)
    user_email = fields.String(allow_none=True)
    user_name = fields.String(allow_none=True)
    status = fields.String(allow_none=True)
    created_at = fields.AwareDateTime(allow_none=True)


def _amount() -> fields.Integer:
    return fields.Integer(strict=True, allow_none=True)


class PauseSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    mode = fields.String(allow_none=True)


class SubscriptionSchema(_Attributes):
    status = fields.String(required=True)
    product_name = fields.String(allow_none=True)
    variant_name = fields.String(allow_none=True)
    renews_at = fields.AwareDateTime(allow_none=True)
    ends_at = fields.AwareDateTime(allow_none=True)
    trial_ends_at = fields.AwareDateTime(allow_none=True)
    cancelled = fields.Boolean(allow_none=True)
    pause = fields.Nested(PauseSchema, allow_none=True)


class PaymentSchema(_Attributes):
    """An order or a subscription invoice: both carry totals and refunds the same way."""

    currency = fields.String(required=True)
    total = _amount()
    refunded_at = fields.AwareDateTime(allow_none=True)
    refunded_amount = _amount()


def _seconds(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def _customer_id(obj: dict[str, Any]) -> str | None:
    return str(obj["customer_id"]) if obj.get("customer_id") is not None else None


def _person(obj: dict[str, Any]) -> dict[str, Any]:
    first, last = split_name(obj.get("user_name"))
    return {
        "email": email_or_none(obj.get("user_email")),
        "first_name": first,
        "last_name": last,
        "lemonsqueezy_customer_id": _customer_id(obj),
    }


# Lemon Squeezy's subscription statuses: "cancelled" still runs until its period ends (ends_at); "paused"
# (payment collection paused), "unpaid" (every retry failed) and "expired" do not make a subscriber, except
# a pause in mode "free" (the subscription object's `pause`: its services are offered for free meanwhile;
# "void" is for when they cannot be offered).
SUBSCRIBED_STATUSES = frozenset({"on_trial", "active", "past_due", "cancelled"})


def serves(obj: dict[str, Any]) -> bool:
    """Whether a subscription's attributes make a subscriber (a sync stamps one that does not with its end)."""
    pause = obj.get("pause")
    return obj.get("status") in SUBSCRIBED_STATUSES or (
        obj.get("status") == "paused" and isinstance(pause, dict) and pause.get("mode") == "free"
    )


def _subscription(obj: dict[str, Any], event_time: int, key: str) -> Extracted:
    product, variant = obj.get("product_name"), obj.get("variant_name")
    fields_ = {
        **_person(obj),
        "subscription_status": obj["status"],
        "plan": f"{product} ({variant})" if product and variant and variant != "Default" else product,
        # renews_at ends the billing cycle, but for past_due it is "the next renewal charge attempt"
        "current_period_end": iso_utc(_seconds(obj.get("renews_at"))) if obj["status"] != "past_due" else None,
        "ends_at": iso_utc(_seconds(obj.get("ends_at"))),
        "trial_end": iso_utc(_seconds(obj.get("trial_ends_at"))),
        "cancel_at_period_end": obj.get("cancelled"),
        "trialing": obj["status"] == "on_trial",
        "subscribed": serves(obj),
        "lemonsqueezy_subscription_id": obj["id"],
    }
    return Extracted(None, _customer_id(obj), fields_, cleared=name_cleared(fields_))


def _payment(obj: dict[str, Any], event_time: int, key: str) -> Extracted:
    currency = obj["currency"]
    fields_ = {
        **_person(obj),
        "paid_at": iso_utc(_seconds(obj.get("created_at")) or event_time),
        "amount_paid": to_major(obj.get("total"), currency),
        "paid_something": bool(obj.get("total")),
        "refunded_at": iso_utc(_seconds(obj.get("refunded_at")) or event_time),
        "amount_refunded": to_major(obj.get("refunded_amount"), currency),
        "currency": currency.lower(),
    }
    return Extracted(None, _customer_id(obj), fields_, cleared=name_cleared(fields_))


EXTRACTORS: dict[str, Extractor] = {
    "subscription": make_extractor(SubscriptionSchema(), _subscription, {"id": "1", "status": "active"}),
    "payment": make_extractor(PaymentSchema(), _payment, {"id": "1", "currency": "USD"}),
}
