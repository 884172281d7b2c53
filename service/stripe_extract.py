"""Extractors: from a validated Stripe object to named fields the mapping can send.

Each extractor owns a schema and a fixed set of field names; the mapping file refers to
those names. A field whose value is unknown is left out (never sent as null), so an event
can never blank an attribute in the CRM by accident.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from marshmallow import Schema

from service import stripe_schemas as s
from service.usercom_fields import E164, EMAIL, NAME_MAX_LENGTH

# Stripe amounts are in the currency's smallest unit; these currencies have none below the unit.
ZERO_DECIMAL_CURRENCIES = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())
THREE_DECIMAL_CURRENCIES = frozenset("bhd jod kwd omr tnd".split())
# How many months one billing interval lasts (on average), to bring any price to a monthly amount.
MONTHS_IN_INTERVAL = {
    "day": Decimal(12) / Decimal("365.25"),
    "week": Decimal(12) / Decimal(52),
    "month": 1,
    "year": Decimal(12),
}


@dataclass(frozen=True)
class Extracted:
    user_id: str | None  # the object's metadata[RELAY_IDENTITY_KEY], when present
    customer_id: str | None
    fields: dict[str, Any]


@dataclass(frozen=True)
class Extractor:
    schema: Schema
    fields: frozenset[str]
    extract: Callable[[dict[str, Any], int, str], Extracted]


def currency_exponent(currency: str) -> int:
    currency = currency.lower()
    if currency in ZERO_DECIMAL_CURRENCIES:
        return 0
    return 3 if currency in THREE_DECIMAL_CURRENCIES else 2


def to_major(amount: int | Decimal | None, currency: str | None) -> float | None:
    """Minor units to major units: 4242 usd -> 42.42, 500 jpy -> 500."""
    if amount is None or not currency:
        return None
    exponent = currency_exponent(currency)
    return float(round(Decimal(amount) / (Decimal(10) ** exponent), exponent))


def iso_utc(timestamp: int | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def split_name(name: str | None) -> tuple[str | None, str | None]:
    """'Ada King Lovelace' -> ('Ada King', 'Lovelace'); each cut to User.com's 40 characters."""
    parts = (name or "").split()
    if not parts:
        return None, None
    first, last = (" ".join(parts[:-1]), parts[-1]) if len(parts) > 1 else (parts[0], None)
    return first[:NAME_MAX_LENGTH].rstrip(), last[:NAME_MAX_LENGTH].rstrip() if last else None


def _identity(metadata: dict[str, Any] | None, identity_key: str) -> str | None:
    value = (metadata or {}).get(identity_key)
    if value is None or isinstance(value, bool):
        return None
    value = str(value).strip()
    return value or None


def _email(value: str | None) -> str | None:
    value = (value or "").strip()
    return value if EMAIL.match(value) else None


def _customer(obj: dict[str, Any], event_time: int, key: str) -> Extracted:
    first, last = split_name(obj.get("name"))
    address = obj.get("address") or {}
    phone = (obj.get("phone") or "").replace(" ", "")
    fields = {
        "email": _email(obj.get("email")),
        "first_name": first,
        "last_name": last,
        "phone_number": phone if E164.match(phone) else None,
        "city": address.get("city") or None,
        "country": address.get("country") or None,
        "stripe_customer_id": obj["id"],
    }
    return Extracted(_identity(obj.get("metadata"), key), obj["id"], fields)


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


def monthly_amount(items: list[dict[str, Any]]) -> Decimal:
    """Sum of items brought to one month, in minor units; metered prices count 0."""
    total = Decimal(0)
    for item in items:
        price = item.get("price") or {}
        amount = _unit_amount(price)
        interval, count = _interval(price)
        if amount is None or interval is None:
            continue
        quantity = item.get("quantity")
        total += amount * (1 if quantity is None else quantity) / (MONTHS_IN_INTERVAL[interval] * count)
    return total


def _subscription(obj: dict[str, Any], event_time: int, key: str) -> Extracted:
    items = obj["items"]["data"]
    price = (items[0].get("price") or {}) if items else {}
    currency = obj.get("currency") or price.get("currency")
    item_period_ends = [i["current_period_end"] for i in items if i.get("current_period_end") is not None]
    period_end = obj.get("current_period_end") or (max(item_period_ends) if item_period_ends else None)
    interval, count = _interval(price)
    fields = {
        "subscription_status": obj["status"],
        "plan": price.get("nickname") or price.get("lookup_key") or price.get("id"),
        "plan_interval": interval if count == 1 or interval is None else f"{count} {interval}s",
        "mrr": to_major(monthly_amount(items), currency),
        "currency": currency.lower() if currency else None,
        "current_period_end": iso_utc(period_end),
        "cancel_at_period_end": obj.get("cancel_at_period_end"),
        "trial_end": iso_utc(obj.get("trial_end")),
        "trialing": obj["status"] == "trialing",
        "stripe_customer_id": obj["customer"],
        "stripe_subscription_id": obj["id"],
    }
    return Extracted(_identity(obj.get("metadata"), key), obj["customer"], fields)


def _invoice(obj: dict[str, Any], event_time: int, key: str) -> Extracted:
    details = ((obj.get("parent") or {}).get("subscription_details")) or obj.get("subscription_details") or {}
    paid_at = (obj.get("status_transitions") or {}).get("paid_at") or event_time
    fields = {
        "paid_at": iso_utc(paid_at),
        "failed_at": iso_utc(event_time),
        "amount_paid": to_major(obj.get("amount_paid"), obj["currency"]),
        "amount_due": to_major(obj.get("amount_due"), obj["currency"]),
        "currency": obj["currency"].lower(),
        "stripe_customer_id": obj.get("customer"),
        "stripe_subscription_id": details.get("subscription") or obj.get("subscription"),
    }
    user = _identity(obj.get("metadata"), key) or _identity(details.get("metadata"), key)
    return Extracted(user, obj.get("customer"), fields)


def _checkout_session(obj: dict[str, Any], event_time: int, key: str) -> Extracted:
    details = obj.get("customer_details") or {}
    fields = {
        "email": _email(details.get("email") or obj.get("customer_email")),
        "stripe_customer_id": obj.get("customer"),
    }
    # client_reference_id is Checkout's own slot for "your id for this user".
    user = _identity(obj.get("metadata"), key) or _identity({"id": obj.get("client_reference_id")}, "id")
    return Extracted(user, obj.get("customer"), fields)


def _charge(obj: dict[str, Any], event_time: int, key: str) -> Extracted:
    fields = {
        "refunded_at": iso_utc(event_time),
        "amount_refunded": to_major(obj["amount_refunded"], obj["currency"]),
        "currency": obj["currency"].lower(),
        "stripe_customer_id": obj.get("customer"),
    }
    return Extracted(_identity(obj.get("metadata"), key), obj.get("customer"), fields)


def _extractor(
    schema: Schema, extract: Callable[[dict[str, Any], int, str], Extracted], example: dict[str, Any]
) -> Extractor:
    return Extractor(schema, frozenset(extract(example, 0, "user_id").fields), extract)


_EMPTY_SUBSCRIPTION = {"id": "sub", "customer": "cus", "status": "active", "items": {"data": []}}
EXTRACTORS: dict[str, Extractor] = {
    "customer": _extractor(s.CustomerSchema(), _customer, {"id": "cus"}),
    "subscription": _extractor(s.SubscriptionSchema(), _subscription, _EMPTY_SUBSCRIPTION),
    "invoice": _extractor(s.InvoiceSchema(), _invoice, {"id": "in", "currency": "usd"}),
    "checkout_session": _extractor(s.CheckoutSessionSchema(), _checkout_session, {"id": "cs"}),
    "charge": _extractor(s.ChargeSchema(), _charge, {"id": "ch", "currency": "usd", "amount_refunded": 0}),
}
