"""What every source's extractors share: the extracted result, and value helpers.

An extractor owns a schema and a fixed set of field names; the mapping file refers to those
names. A field whose value is unknown is left out (never sent as null), so an event can never
blank an attribute in the CRM by accident.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from marshmallow import Schema, ValidationError

from service.core.attributes import NAME_MAX_LENGTH
from service.core.update import user_id_problem

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


# Identity fields a buyer can set (in a Payment Link URL, from the browser at checkout): an
# attacker can name someone else's user id there. Used as the user id only when
# RELAY_TRUSTED_IDENTITY_FIELDS names them (default: none). Stripe `metadata`, set server-side
# through the Stripe API, is always trusted.
BUYER_SETTABLE_FIELDS = ("stripe.client_reference_id", "paddle.custom_data", "lemonsqueezy.custom_data")


@dataclass(frozen=True)
class Claim:
    """A user id read from a buyer-settable field (one of BUYER_SETTABLE_FIELDS)."""

    field: str
    user_id: str


@dataclass(frozen=True)
class Extracted:
    user_id: str | None  # the object's metadata[RELAY_IDENTITY_KEY], when present
    customer_id: str | None
    fields: dict[str, Any]
    claim: Claim | None = None  # a user id from a buyer-settable field: trusted only when configured
    # Fields the event says are empty (None in `fields` is unknown otherwise, and sends nothing): they are
    # sent as null, which clears what the destination had (a whole name of one word: no last name).
    cleared: frozenset[str] = frozenset()


def name_cleared(fields: dict[str, Any]) -> frozenset[str]:
    """A provider's whole name of one word ("Grace", split_name's) names no last name: the one the user had
    is gone, not unknown. Kept, "Ada Lovelace" renamed "Grace" showed "Grace Lovelace" (and UserKit was
    sent that name, made whole from the last part it was sent)."""
    return frozenset({"last_name"}) if fields.get("first_name") and fields.get("last_name") is None else frozenset()


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


def identity(metadata: dict[str, Any] | None, identity_key: str) -> str | None:
    """The user id under `identity_key` (an integer as its digits), None when there is none; raises
    ValidationError when it cannot be one (an object, a list, a number with a fraction)."""
    value = (metadata or {}).get(identity_key)
    if value is None or isinstance(value, bool):
        return None
    if not isinstance(value, str | int):
        raise ValidationError({identity_key: [f"A user id is a string or an integer, not {type(value).__name__}."]})
    value = str(value).strip()
    return value or None


def claimed(field: str, data: dict[str, Any] | None, identity_key: str) -> Claim | None:
    """A buyer-settable field's user id; none when it cannot be one (whoever set it must not make the
    event refused: untrusted, it is not used anyway)."""
    try:
        user_id = identity(data, identity_key)
    except ValidationError:
        return None
    return Claim(field, user_id) if user_id and not user_id_problem(user_id) else None


def trusted_user_id(user_id: str | None, claim: Claim | None, trusted: frozenset[str]) -> str | None:
    """The event's user id: from a trusted field (metadata), else from a buyer-settable one the
    operator trusts; an untrusted claim is left out (the customer's identity applies)."""
    if user_id:
        return user_id
    return claim.user_id if claim is not None and claim.field in trusted else None


def email_or_none(value: str | None) -> str | None:
    """The address as the provider has it (None when empty). Its shape is the destination's rule to
    check (service/destinations/usercom/rules.py): a bad one is reported there, never dropped here."""
    value = (value or "").strip()
    return value or None


def make_extractor(
    schema: Schema, extract: Callable[[dict[str, Any], int, str], Extracted], example: dict[str, Any]
) -> Extractor:
    return Extractor(schema, frozenset(extract(example, 0, "user_id").fields), extract)
