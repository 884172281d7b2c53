"""Extractors: from a validated Stripe object to named fields the mapping can send."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from service.sources.extraction import (
    MONTHS_IN_INTERVAL,
    Extracted,
    Extractor,
    claimed,
    email_or_none,
    identity,
    iso_utc,
    make_extractor,
    name_cleared,
    split_name,
    to_major,
)
from service.sources.stripe import schemas as s

# Stripe's MRR counts active and past_due subscriptions only: a trial, a first payment not made yet
# (incomplete), a paused or an unpaid one bills nothing (docs.stripe.com/billing/subscriptions/analytics).
BILLING_STATUSES = frozenset({"active", "past_due"})
# A subscriber: billed, or on trial (incomplete: its first payment never came). A sync's snapshot of any
# other subscription is dated before its read (service/backfill/sync.py), so a live one read in the same
# second outranks it.
SUBSCRIBED_STATUSES = BILLING_STATUSES | {"trialing"}


def _customer(obj: dict[str, Any], event_time: int, key: str) -> Extracted:
    first, last = split_name(obj.get("name"))
    address = obj.get("address") or {}
    phone = (obj.get("phone") or "").replace(" ", "")
    fields = {
        "email": email_or_none(obj.get("email")),
        "first_name": first,
        "last_name": last,
        "phone_number": phone or None,  # E.164 or not: the destination's rules say (and report it)
        "city": address.get("city") or None,
        "country": address.get("country") or None,
        "stripe_customer_id": obj["id"],
    }
    return Extracted(identity(obj.get("metadata"), key), obj["id"], fields, cleared=name_cleared(fields))


def _unit_amount(price: dict[str, Any]) -> Decimal | None:
    for name in ("unit_amount", "unit_amount_decimal", "amount"):
        if price.get(name) is not None:
            return Decimal(price[name])
    return None


def _interval(price: dict[str, Any]) -> tuple[str | None, int]:
    recurring = price.get("recurring") or {}
    interval = recurring.get("interval") or price.get("interval")
    count = recurring.get("interval_count") or price.get("interval_count") or 1
    return interval, count


def monthly_amount(items: list[dict[str, Any]], currency: str | None = None) -> Decimal | None:
    """Sum of items brought to one month, in minor units; metered prices count 0. None when it cannot be
    known from the event: a tiered price (no unit amount), or a price in another currency than the
    subscription's (its amount there is in currency_options, which webhooks do not carry)."""
    total = Decimal(0)
    for item in items:
        price = item.get("price") or {}
        interval, count = _interval(price)
        if interval is None or (price.get("recurring") or {}).get("usage_type") == "metered":
            continue
        amount = _unit_amount(price)
        if amount is None or (currency and price.get("currency") and price["currency"].lower() != currency.lower()):
            return None
        quantity = item.get("quantity")
        total += amount * (1 if quantity is None else quantity) / (MONTHS_IN_INTERVAL[interval] * count)
    return total


def forever_coupons(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The coupons of the subscription's discounts that last for good (Stripe's MRR takes them off: "a 50%
    off coupon that has a duration of forever will halve that subscription's MRR"), once each (the
    legacy `discount` is also among `discounts` where both are sent); only those the event shows."""
    found = {}
    for discount in [obj.get("discount"), *(obj.get("discounts") or [])]:
        coupon = (discount or {}).get("coupon")
        if coupon and coupon.get("duration") == "forever":
            found[discount.get("id") or id(discount)] = coupon
    return list(found.values())


def discounted(
    monthly: Decimal | None, coupons: list[dict[str, Any]], currency: str | None, months: Decimal
) -> Decimal | None:
    """A month's amount less the forever coupons: a percentage off, or an amount off each invoice (of
    `months` months); None when an amount off is in another currency."""
    if monthly is None:
        return None
    for coupon in coupons:
        if coupon.get("percent_off") is not None:
            monthly = monthly * (100 - Decimal(coupon["percent_off"])) / 100
        elif coupon.get("amount_off") is not None:
            if currency and coupon.get("currency") and coupon["currency"].lower() != currency.lower():
                return None
            monthly -= Decimal(coupon["amount_off"]) / months
    return max(monthly, Decimal(0))


def _subscription(obj: dict[str, Any], event_time: int, key: str) -> Extracted:
    items = obj["items"]["data"]
    price = (items[0].get("price") or {}) if items else {}
    currency = obj.get("currency") or price.get("currency")
    item_period_ends = [i["current_period_end"] for i in items if i.get("current_period_end") is not None]
    # basil: periods are per item; the subscription's own ends with the earliest (Stripe's changelog
    # 2025-03-31.basil: cancel_at_period_end cancels at the earliest item period end).
    period_end = obj.get("current_period_end") or (min(item_period_ends) if item_period_ends else None)
    interval, count = _interval(price)
    billed = monthly_amount(items, currency) if obj["status"] in BILLING_STATUSES else Decimal(0)
    if billed and interval is not None:  # an amount off comes off each invoice: the first item's span
        billed = discounted(billed, forever_coupons(obj), currency, MONTHS_IN_INTERVAL[interval] * count)
    fields = {
        "subscription_status": obj["status"],
        "plan": price.get("nickname") or price.get("lookup_key") or price.get("id"),
        "plan_interval": interval if count == 1 or interval is None else f"{count} {interval}s",
        "mrr": 0.0 if billed == 0 else to_major(billed, currency),  # None: not known from the event
        "currency": currency.lower() if currency else None,
        "current_period_end": iso_utc(period_end),
        "cancel_at_period_end": obj.get("cancel_at_period_end"),
        "cancel_at": iso_utc(obj.get("cancel_at")),
        "trial_end": iso_utc(obj.get("trial_end")),
        "trialing": obj["status"] == "trialing",
        "subscribed": obj["status"] in SUBSCRIBED_STATUSES,
        "stripe_customer_id": obj["customer"],
        "stripe_subscription_id": obj["id"],
    }
    # A subscription object always says whether a cancel is scheduled: null once it was taken back.
    unscheduled = frozenset({"cancel_at"}) if "cancel_at" in obj and obj["cancel_at"] is None else frozenset()
    return Extracted(identity(obj.get("metadata"), key), obj["customer"], fields, cleared=unscheduled)


def _invoice(obj: dict[str, Any], event_time: int, key: str) -> Extracted:
    details = ((obj.get("parent") or {}).get("subscription_details")) or obj.get("subscription_details") or {}
    paid_at = (obj.get("status_transitions") or {}).get("paid_at") or event_time
    fields = {
        "paid_at": iso_utc(paid_at),
        "failed_at": iso_utc(event_time),
        "amount_paid": to_major(obj.get("amount_paid"), obj["currency"]),
        "paid_something": bool(obj.get("amount_paid")),  # a trial's first invoice is paid, for 0
        "amount_due": to_major(obj.get("amount_due"), obj["currency"]),
        "currency": obj["currency"].lower(),
        "stripe_customer_id": obj.get("customer"),
        "stripe_subscription_id": details.get("subscription") or obj.get("subscription"),
    }
    user = identity(obj.get("metadata"), key) or identity(details.get("metadata"), key)
    return Extracted(user, obj.get("customer"), fields)


def _checkout_session(obj: dict[str, Any], event_time: int, key: str) -> Extracted:
    details = obj.get("customer_details") or {}
    fields = {
        "email": email_or_none(details.get("email") or obj.get("customer_email")),
        "stripe_customer_id": obj.get("customer"),
    }
    # client_reference_id is Checkout's own slot for "your id for this user", but a Payment Link
    # takes it from its URL: anyone can set it, so it is a claim (trusted only when configured).
    claim = claimed("stripe.client_reference_id", {"id": obj.get("client_reference_id")}, "id")
    return Extracted(identity(obj.get("metadata"), key), obj.get("customer"), fields, claim)


def _charge(obj: dict[str, Any], event_time: int, key: str) -> Extracted:
    fields = {
        "refunded_at": iso_utc(event_time),
        "amount_refunded": to_major(obj["amount_refunded"], obj["currency"]),
        "currency": obj["currency"].lower(),
        "stripe_customer_id": obj.get("customer"),
    }
    return Extracted(identity(obj.get("metadata"), key), obj.get("customer"), fields)


_EMPTY_SUBSCRIPTION = {"id": "sub", "customer": "cus", "status": "active", "items": {"data": []}}
EXTRACTORS: dict[str, Extractor] = {
    "customer": make_extractor(s.CustomerSchema(), _customer, {"id": "cus"}),
    "subscription": make_extractor(s.SubscriptionSchema(), _subscription, _EMPTY_SUBSCRIPTION),
    "invoice": make_extractor(s.InvoiceSchema(), _invoice, {"id": "in", "currency": "usd"}),
    "checkout_session": make_extractor(s.CheckoutSessionSchema(), _checkout_session, {"id": "cs"}),
    "charge": make_extractor(s.ChargeSchema(), _charge, {"id": "ch", "currency": "usd", "amount_refunded": 0}),
}
