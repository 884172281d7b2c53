"""marshmallow schemas for the parts of Stripe events the relay reads.

Only the fields we use are declared; everything else is excluded, so a new field from Stripe
never rejects a webhook. Both API shapes are accepted: before `2025-03-31.basil`
(`subscription.current_period_end`, `invoice.subscription`) and after it
(`items.data[].current_period_end`, `invoice.parent.subscription_details`).
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from service.sources.base import WholeMatch

STRIPE_ID = WholeMatch(r"^[A-Za-z0-9_]{1,255}$", error="Not a Stripe id.")


class _Stripe(Schema):
    class Meta:
        unknown = EXCLUDE


class ExpandableId(fields.Field):
    """A reference Stripe sends either as an id string or as the expanded object."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, dict):
            value = value.get("id")
        if not isinstance(value, str) or not value:
            raise ValidationError("Must be an id string or an object with an id.")
        return value


def _metadata() -> fields.Dict:
    return fields.Dict(keys=fields.String(), values=fields.Raw(allow_none=True), allow_none=True)


def _text() -> fields.String:
    return fields.String(allow_none=True)


def _int() -> fields.Integer:
    return fields.Integer(strict=True, allow_none=True)


class AddressSchema(_Stripe):
    city = _text()
    country = _text()


class CustomerSchema(_Stripe):
    id = fields.String(required=True, validate=STRIPE_ID)
    email = _text()
    name = _text()
    phone = _text()
    address = fields.Nested(AddressSchema, allow_none=True)
    metadata = _metadata()
    deleted = fields.Boolean()


class RecurringSchema(_Stripe):
    interval = fields.String(validate=validate.OneOf(["day", "week", "month", "year"]))
    interval_count = fields.Integer(strict=True, validate=validate.Range(min=1))
    usage_type = _text()  # "metered": billed on usage reported later, not counted in MRR


class PriceSchema(_Stripe):
    """A price, or a legacy plan (which has `amount` and `interval` at its top level)."""

    id = fields.String(required=True)
    nickname = _text()
    lookup_key = _text()
    currency = _text()
    unit_amount = _int()
    unit_amount_decimal = fields.Decimal(allow_none=True, as_string=False)
    amount = _int()
    recurring = fields.Nested(RecurringSchema, allow_none=True)
    interval = fields.String(allow_none=True, validate=validate.OneOf(["day", "week", "month", "year"]))
    interval_count = fields.Integer(strict=True, allow_none=True, validate=validate.Range(min=1))


class SubscriptionItemSchema(_Stripe):
    # Items carry `price` in every API version that sends webhooks today; its legacy twin `plan`
    # (same numbers, older names) is not read: validating it too would cost a third of the load.
    price = fields.Nested(PriceSchema, allow_none=True)
    quantity = _int()
    current_period_end = _int()


class SubscriptionItemListSchema(_Stripe):
    data = fields.List(fields.Nested(SubscriptionItemSchema), required=True)


class CouponSchema(_Stripe):
    percent_off = fields.Decimal(allow_none=True, as_string=False)
    amount_off = _int()
    currency = _text()
    duration = _text()  # forever, once, repeating


class DiscountSchema(_Stripe):
    id = _text()
    coupon = fields.Nested(CouponSchema, allow_none=True)


class DiscountRef(fields.Field):
    """An entry of `discounts`: a discount id (what it takes off, the event does not say: None) or the
    expanded discount."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict[str, Any] | None:
        if isinstance(value, str):
            return None
        if isinstance(value, dict):
            return dict(DiscountSchema().load(value))
        raise ValidationError("Must be a discount id or object.")


class SubscriptionSchema(_Stripe):
    id = fields.String(required=True, validate=STRIPE_ID)
    customer = ExpandableId(required=True)
    status = fields.String(required=True)
    items = fields.Nested(SubscriptionItemListSchema, required=True)
    currency = _text()
    current_period_end = _int()
    cancel_at_period_end = fields.Boolean(allow_none=True)
    cancel_at = _int()  # a cancel scheduled for then (since 2025-07-30.basil, also with cancel_at_period_end false)
    trial_end = _int()
    metadata = _metadata()
    discount = fields.Nested(DiscountSchema, allow_none=True)  # before 2025-03-31.basil
    discounts = fields.List(DiscountRef(allow_none=True), allow_none=True)


class SubscriptionDetailsSchema(_Stripe):
    subscription = ExpandableId(allow_none=True)
    metadata = _metadata()


class InvoiceParentSchema(_Stripe):
    subscription_details = fields.Nested(SubscriptionDetailsSchema, allow_none=True)


class StatusTransitionsSchema(_Stripe):
    paid_at = _int()


class InvoiceSchema(_Stripe):
    id = fields.String(required=True, validate=STRIPE_ID)
    customer = ExpandableId(allow_none=True)
    currency = fields.String(required=True)
    amount_paid = _int()
    amount_due = _int()
    status_transitions = fields.Nested(StatusTransitionsSchema, allow_none=True)
    subscription = ExpandableId(allow_none=True)  # before basil
    subscription_details = fields.Nested(SubscriptionDetailsSchema, allow_none=True)  # before basil
    parent = fields.Nested(InvoiceParentSchema, allow_none=True)  # basil and later
    metadata = _metadata()


class CustomerDetailsSchema(_Stripe):
    email = _text()


class CheckoutSessionSchema(_Stripe):
    id = fields.String(required=True)
    customer = ExpandableId(allow_none=True)
    customer_details = fields.Nested(CustomerDetailsSchema, allow_none=True)
    customer_email = _text()
    client_reference_id = _text()
    metadata = _metadata()


class ChargeSchema(_Stripe):
    id = fields.String(required=True, validate=STRIPE_ID)
    customer = ExpandableId(allow_none=True)
    currency = fields.String(required=True)
    amount_refunded = fields.Integer(strict=True, required=True)
    metadata = _metadata()


class EventDataSchema(_Stripe):
    # The object is validated by the schema its event type's mapping names.
    object = fields.Dict(required=True)


class EventSchema(_Stripe):
    id = fields.String(required=True, validate=STRIPE_ID)
    type = fields.String(required=True, validate=validate.Length(min=1, max=255))
    created = fields.Integer(strict=True, required=True, validate=validate.Range(min=0))
    api_version = _text()
    livemode = fields.Boolean()
    data = fields.Nested(EventDataSchema, required=True)
