from __future__ import annotations

from pathlib import Path

import pytest

from service.mapping import MappingError, load_mapping
from service.mapping.rules import undocumented_types
from service.sources.registry import SOURCES
from service.sources.stripe.extract import Extracted


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mapping.toml"
    path.write_text(text)
    return path


def test_default_mapping_covers_the_documented_events() -> None:
    rules = load_mapping(None).rules
    assert set(rules["paddle"]) == {
        "customer.created",
        "customer.updated",
        "subscription.created",
        "subscription.updated",
        "subscription.canceled",
        "transaction.completed",
        "adjustment.created",
        "adjustment.updated",
    }
    assert set(rules["lemonsqueezy"]) == {
        "order_created",
        "order_refunded",
        "subscription_created",
        "subscription_updated",
        "subscription_expired",
        "subscription_payment_success",
        "subscription_payment_failed",
        "subscription_payment_refunded",
    }
    assert set(rules["stripe"]) == {
        "customer.created",
        "customer.updated",
        "customer.deleted",
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.paused",
        "customer.subscription.resumed",
        "customer.subscription.deleted",
        "customer.subscription.trial_will_end",
        "invoice.paid",
        "invoice.payment_failed",
        "checkout.session.completed",
        "charge.refunded",
    }


def test_override_renames_attributes_and_tags(tmp_path: Path) -> None:
    mapping = load_mapping(
        write(
            tmp_path,
            """
[stripe."charge.refunded"]
extract = "charge"
custom = { amount_refunded = "refund_total" }
tags = ["got-refund"]
tags_if = {}
""",
        )
    )
    rule = mapping.rule_for("stripe", "charge.refunded")
    assert rule is not None and mapping.rule_for("stripe", "invoice.paid") is None
    assert mapping.rule_for("paddle", "charge.refunded") is None
    extracted = Extracted("u1", "cus_1", {"amount_refunded": 5.0, "refunded_at": "2020-01-01T00:00:00Z"})
    assert rule.apply(extracted) == ({}, {"refund_total": 5.0}, ["got-refund"])


def test_values_missing_from_the_event_are_not_sent() -> None:
    rule = load_mapping(None).rules["stripe"]["customer.updated"]
    standard, custom, _ = rule.apply(Extracted(None, "cus_1", {"email": None, "stripe_customer_id": "cus_1"}))
    assert standard == {} and custom == {"stripe_customer_id": "cus_1"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not toml = = =", "not valid TOML"),
        (
            '[stripe."a"]\nextract = "subscription"\ncustom = { plan = "x", currency = "x" }',
            "custom: 'x' is given by two fields",
        ),
        (
            '[stripe."a"]\nextract = "customer"\nstandard = { email = "email", phone_number = "email" }',
            "standard: 'email' is given by two fields",
        ),
        ('[chargebee."x"]\nextract = "customer"', "unknown source"),
        (
            '[paddle."x"]\nextract = "charge"\ntags = ["t"]',
            "extract must be one of .'adjustment', 'customer', 'subscription'",
        ),
        ('[stripe."a"]\nextract = "nope"\ntags = ["t"]', "extract must be one of"),
        ('[stripe."a"]\nextract = []\ntags = ["t"]', "extract must be one of"),
        ('[stripe."a"]\nextract = { customer = 1 }\ntags = ["t"]', "extract must be one of"),
        ('[stripe."a"]\nextract = "customer"\nstandard = { email = "mail" }', "not a User.com standard attribute"),
        ('[stripe."a"]\nextract = "customer"\ncustom = { nope = "x" }', "unknown field 'nope'"),
        ('[stripe."a"]\nextract = "customer"\ncustom = { email = "Bad Name" }', "not a valid custom attribute"),
        ('[stripe."a"]\nextract = "customer"\nset = { email = "x" }', "not a valid custom attribute"),
        ('[stripe."a"]\nextract = "customer"\ncustom = { email = "created_at" }', "a field of User.com's user record"),
        ('[stripe."a"]\nextract = "customer"\ntags = "one"', "tags must be a list"),
        ('[stripe."a"]\nextract = "customer"\ntags_if = { t = "trialing" }', "unknown field 'trialing'"),
        ('[stripe."a"]\nextract = "customer"\nset = { since = 2026-01-01T00:00:00Z }', "not a TOML date or time"),
        ('[stripe."a"]\nextract = "customer"\nset = { day = 2026-01-01 }', "not a TOML date or time"),
        ('[stripe."a"]\nextract = "customer"\nset = { plans = ["a", "b"] }', "not a TOML array"),
        ('[stripe."a"]\nextract = "customer"\nset = { plan = { name = "a" } }', "not a TOML table"),
        ('[stripe."a"]\nextract = "customer"\nset = { mrr = inf }', "finite number"),
        ('[stripe."a"]\nextract = "customer"\nset = { mrr = nan }', "finite number"),
        ('[stripe."a"]\nextract = "customer"\nset = { mrr = 9007199254740993 }', "beyond"),
        ('[stripe."a"]\nextract = "customer"\ntags = ["' + "t" * 256 + '"]', "at most 255 characters"),
        ('[stripe."a"]\nextract = "subscription"\ntags_if = { "" = "trialing" }', "'' is not a tag"),
        ('[stripe."a"]\nextract = "subscription"\ntags_if = { " " = "trialing" }', "' ' is not a tag"),
        ('[stripe."a"]\nextract = "customer"\nspelling = 1', "unknown key"),
        ('[stripe."a"]\nextract = "customer"', "sends nothing"),
        ("", "maps no"),
    ],
)
def test_bad_mapping_files_are_refused_with_a_reason(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(MappingError, match=message):
        load_mapping(write(tmp_path, text))


def test_set_takes_the_values_an_attribute_can_hold(tmp_path: Path) -> None:
    """Strings, booleans, integers and finite numbers within +-2^53, as a Standard Webhooks attribute."""
    text = '[stripe."a"]\nextract = "customer"\nset = { s = "x", b = false, i = -9007199254740992, f = 0.5 }'
    rule = load_mapping(write(tmp_path, text)).rule_for("stripe", "a")
    assert rule is not None and rule.constants == {"s": "x", "b": False, "i": -(2**53), "f": 0.5}


def test_a_leading_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    """Some editors save UTF-8 with a BOM: it is not a TOML error at line 1, column 1."""
    path = tmp_path / "mapping.toml"
    path.write_bytes(b'\xef\xbb\xbf[stripe."invoice.paid"]\nextract = "invoice"\ntags = ["paid"]\n')
    assert load_mapping(path).rule_for("stripe", "invoice.paid") is not None


def test_a_mapped_event_type_its_provider_does_not_document_is_told_with_the_closest_one(tmp_path: Path) -> None:
    """A typo's events would be answered "ignored" for good; a type newer than the lists is not refused."""
    assert undocumented_types(load_mapping(None)) == []
    assert "customer.subscription.updated" in (SOURCES["stripe"].documented_types() or ())  # the stripe package's
    path = tmp_path / "mapping.toml"
    path.write_text(
        '[stripe."customer.subscriptions.updated"]\nextract = "subscription"\ncustom = { plan = "plan" }\n'
        '[paddle."subscription.update"]\nextract = "subscription"\ncustom = { plan = "plan" }\n'
        '[lemonsqueezy.order_created]\nextract = "payment"\ntags = ["buyer"]\n'
    )
    assert undocumented_types(load_mapping(path)) == [
        'the mapping names stripe event type "customer.subscriptions.updated", not one of the Stripe event types '
        'this release knows (did you mean "customer.subscription.updated"?); if it is a typo, those events are '
        "answered ignored",
        'the mapping names paddle event type "subscription.update", not one of the Paddle event types this release '
        'knows (did you mean "subscription.updated"?); if it is a typo, those events are answered ignored',
    ]
