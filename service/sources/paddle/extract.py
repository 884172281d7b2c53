"""Paddle Billing: schemas for the objects the relay reads, and their extractors.

Identity: the Paddle customer id (`ctm_...`), or the user learned for it. `custom_data[RELAY_IDENTITY_KEY]`
(Paddle's slot for your own data) can be set from the browser at checkout: it names the user only
when RELAY_TRUSTED_IDENTITY_FIELDS lists `paddle.custom_data`. Amounts are strings in the currency's smallest unit.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from marshmallow import EXCLUDE, Schema, fields, validate

from service.sources.base import WholeMatch
from service.sources.extraction import (
    MONTHS_IN_INTERVAL,
    Claim,
    Extracted,
    Extractor,
    claimed,
    email_or_none,
    iso_utc,
    make_extractor,
    name_cleared,
    split_name,
    to_major,
)

PADDLE_ID = WholeMatch(r"^[A-Za-z0-9_]{1,255}$", error="Not a Paddle id.")
INTERVALS = validate.OneOf(["day", "week", "month", "year"])
# Only these bill (MRR counts them): a trial and a paused subscription charge nothing (Paddle's status
# reference: paused, "the customer will not be charged").
BILLING_STATUSES = frozenset({"active", "past_due"})
SUBSCRIBED_STATUSES = BILLING_STATUSES | {"trialing"}
# Items Paddle does not bill for: in a trial of their own ("Paddle has not billed for it"), or inactive
# (set while the subscription is paused).
UNBILLED_ITEM_STATUSES = frozenset({"trialing", "inactive"})


class _Paddle(Schema):
    class Meta:
        unknown = EXCLUDE


def _text() -> fields.String:
    return fields.String(allow_none=True)


def _custom_data() -> fields.Dict:
    return fields.Dict(keys=fields.String(), values=fields.Raw(allow_none=True), allow_none=True)


class BillingCycleSchema(_Paddle):
    interval = fields.String(required=True, validate=INTERVALS)
    frequency = fields.Integer(strict=True, required=True, validate=validate.Range(min=1))


class MoneySchema(_Paddle):
    amount = fields.Decimal(required=True, as_string=False)
    currency_code = _text()


class PriceSchema(_Paddle):
    id = fields.String(required=True)
    name = _text()
    description = _text()
    unit_price = fields.Nested(MoneySchema, allow_none=True)
    billing_cycle = fields.Nested(BillingCycleSchema, allow_none=True)


class ItemSchema(_Paddle):
    status = _text()
    price = fields.Nested(PriceSchema, required=True)
    quantity = fields.Integer(strict=True, allow_none=True)


class PeriodSchema(_Paddle):
    ends_at = fields.AwareDateTime(allow_none=True)


class DiscountSchema(_Paddle):
    id = _text()
    starts_at = fields.AwareDateTime(allow_none=True)
    ends_at = fields.AwareDateTime(allow_none=True)  # null: the discount recurs forever


class ScheduledChangeSchema(_Paddle):
    action = _text()


class SubscriptionSchema(_Paddle):
    id = fields.String(required=True, validate=PADDLE_ID)
    status = fields.String(required=True)
    customer_id = fields.String(required=True, validate=PADDLE_ID)
    currency_code = _text()
    items = fields.List(fields.Nested(ItemSchema), required=True)
    billing_cycle = fields.Nested(BillingCycleSchema, allow_none=True)
    current_billing_period = fields.Nested(PeriodSchema, allow_none=True)
    scheduled_change = fields.Nested(ScheduledChangeSchema, allow_none=True)
    discount = fields.Nested(DiscountSchema, allow_none=True)
    custom_data = _custom_data()


class CustomerSchema(_Paddle):
    id = fields.String(required=True, validate=PADDLE_ID)
    name = _text()
    email = _text()
    custom_data = _custom_data()


class TotalsSchema(_Paddle):
    total = fields.Decimal(allow_none=True, as_string=False)
    grand_total = fields.Decimal(allow_none=True, as_string=False)  # total less credits applied: what was paid


class DetailsSchema(_Paddle):
    totals = fields.Nested(TotalsSchema, allow_none=True)


class AdjustmentTotalsSchema(_Paddle):
    total = fields.Decimal(allow_none=True, as_string=False)  # what is refunded or credited, tax included


class AdjustmentSchema(_Paddle):
    id = fields.String(required=True, validate=PADDLE_ID)
    action = fields.String(required=True)
    status = fields.String(required=True)
    customer_id = fields.String(allow_none=True, validate=PADDLE_ID)
    subscription_id = fields.String(allow_none=True)
    currency_code = fields.String(required=True)
    totals = fields.Nested(AdjustmentTotalsSchema, allow_none=True)
    created_at = fields.AwareDateTime(allow_none=True)
    updated_at = fields.AwareDateTime(allow_none=True)


class PaymentSchema(_Paddle):
    status = _text()
    captured_at = fields.AwareDateTime(allow_none=True)


class TransactionSchema(_Paddle):
    id = fields.String(required=True, validate=PADDLE_ID)
    customer_id = fields.String(allow_none=True, validate=PADDLE_ID)
    subscription_id = fields.String(allow_none=True)
    currency_code = fields.String(required=True)
    collection_mode = _text()
    billed_at = fields.AwareDateTime(allow_none=True)
    payments = fields.List(fields.Nested(PaymentSchema), allow_none=True)
    details = fields.Nested(DetailsSchema, allow_none=True)
    custom_data = _custom_data()


def _claim(obj: dict[str, Any], key: str) -> Claim | None:
    return claimed("paddle.custom_data", obj.get("custom_data"), key)


def _seconds(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def monthly_amount(items: list[dict[str, Any]], currency: str | None = None) -> Decimal | None:
    """Recurring items Paddle bills brought to one month, in minor units (an item in a trial of its own
    counts 0). None when a price is in another currency than the subscription's: what is charged then is
    a country's override or Paddle's conversion, which the event does not say."""
    total = Decimal(0)
    for item in items:
        price, cycle = item["price"], item["price"].get("billing_cycle")
        if price.get("unit_price") is None or cycle is None or item.get("status") in UNBILLED_ITEM_STATUSES:
            continue  # a one-time charge, or an item not billed
        priced_in = price["unit_price"].get("currency_code")
        if currency and priced_in and priced_in.upper() != currency.upper():
            return None
        quantity = 1 if item.get("quantity") is None else item["quantity"]
        total += price["unit_price"]["amount"] * quantity / (MONTHS_IN_INTERVAL[cycle["interval"]] * cycle["frequency"])
    return total


def _subscription(obj: dict[str, Any], event_time: int, key: str) -> Extracted:
    price = obj["items"][0]["price"] if obj["items"] else {}
    cycle = obj.get("billing_cycle") or price.get("billing_cycle") or {}
    interval, count = cycle.get("interval"), cycle.get("frequency", 1)
    currency = obj.get("currency_code")
    period = obj.get("current_billing_period") or {}
    billed = monthly_amount(obj["items"], currency) if obj["status"] in BILLING_STATUSES else Decimal(0)
    discount = obj.get("discount") or {}
    if billed and discount and discount.get("ends_at") is None:
        billed = None  # a discount for good: what it takes off each period, the event does not say
    fields_ = {
        "subscription_status": obj["status"],
        "plan": price.get("name") or price.get("description") or price.get("id"),
        "plan_interval": interval if count == 1 or interval is None else f"{count} {interval}s",
        "mrr": 0.0 if billed == 0 else to_major(billed, currency),  # None: not known from the event
        "currency": currency.lower() if currency else None,
        "current_period_end": iso_utc(_seconds(period.get("ends_at"))),
        "cancel_at_period_end": (obj.get("scheduled_change") or {}).get("action") == "cancel",
        "trialing": obj["status"] == "trialing",
        "subscribed": obj["status"] in SUBSCRIBED_STATUSES,
        "paddle_customer_id": obj["customer_id"],
        "paddle_subscription_id": obj["id"],
    }
    return Extracted(None, obj["customer_id"], fields_, _claim(obj, key))


def _customer(obj: dict[str, Any], event_time: int, key: str) -> Extracted:
    first, last = split_name(obj.get("name"))
    fields_ = {
        "email": email_or_none(obj.get("email")),
        "first_name": first,
        "last_name": last,
        "paddle_customer_id": obj["id"],
    }
    return Extracted(None, obj["id"], fields_, _claim(obj, key), cleared=name_cleared(fields_))


def _paid_at(obj: dict[str, Any], event_time: int) -> int:
    """When it was paid: its payment's capture; without one, when it was billed, unless it is an invoice
    (manual collection: billed when issued, paid later), then when it completed (the event)."""
    captured = [p["captured_at"] for p in obj.get("payments") or [] if p.get("captured_at") is not None]
    if captured:
        return int(max(captured).timestamp())
    billed = _seconds(obj.get("billed_at")) if obj.get("collection_mode") != "manual" else None
    return billed or event_time


def _transaction(obj: dict[str, Any], event_time: int, key: str) -> Extracted:
    totals = (obj.get("details") or {}).get("totals") or {}
    paid = totals["grand_total"] if totals.get("grand_total") is not None else totals.get("total")
    fields_ = {
        "paid_at": iso_utc(_paid_at(obj, event_time)),
        "amount_paid": to_major(paid, obj["currency_code"]),
        "paid_something": bool(paid),  # a trial's first transaction completes for 0
        "currency": obj["currency_code"].lower(),
        "paddle_customer_id": obj.get("customer_id"),
        "paddle_subscription_id": obj.get("subscription_id"),
    }
    return Extracted(None, obj.get("customer_id"), fields_, _claim(obj, key))


def _adjustment(obj: dict[str, Any], event_time: int, key: str) -> Extracted:
    """A refund once Paddle approved it (adjustment.created for one approved at once, else adjustment.updated:
    "most refunds for live accounts require Paddle approval and are created as pending_approval"); any other
    adjustment (a credit, a chargeback, a refund pending or rejected) reports nothing."""
    refunded = obj["action"] == "refund" and obj["status"] == "approved"
    when = obj.get("updated_at") or obj.get("created_at")
    fields_ = {
        "refunded_at": iso_utc(_seconds(when) or event_time) if refunded else None,
        "amount_refunded": to_major((obj.get("totals") or {}).get("total"), obj["currency_code"]) if refunded else None,
        "refunded": refunded,
        "currency": obj["currency_code"].lower(),
        "paddle_customer_id": obj.get("customer_id"),
        "paddle_subscription_id": obj.get("subscription_id"),
    }
    return Extracted(None, obj.get("customer_id"), fields_)


EXTRACTORS: dict[str, Extractor] = {
    "subscription": make_extractor(
        SubscriptionSchema(), _subscription, {"id": "sub", "status": "active", "customer_id": "ctm", "items": []}
    ),
    "customer": make_extractor(CustomerSchema(), _customer, {"id": "ctm"}),
    "transaction": make_extractor(TransactionSchema(), _transaction, {"id": "txn", "currency_code": "USD"}),
    "adjustment": make_extractor(
        AdjustmentSchema(), _adjustment, {"id": "adj", "action": "refund", "status": "approved", "currency_code": "USD"}
    ),
}
