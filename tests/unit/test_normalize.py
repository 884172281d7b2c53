"""Stripe events (the shared real payloads, both API shapes) -> normalized user updates."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from marshmallow import ValidationError

from service.core.update import UserUpdate
from service.sources.stripe.extract import split_name, to_major
from tests.conftest import load_fixture, read, stripe_event

T = 1_700_000_000  # event time used for wrapped fixtures
T_ISO = "2023-11-14T22:13:20Z"


def normalize(event: dict[str, Any], identity_key: str = "user_id") -> UserUpdate:
    update = read("stripe", event, identity_key).update
    assert update is not None
    return update


def wrapped(event_type: str, fixture: str, **kw: Any) -> dict[str, Any]:
    body = load_fixture(fixture)
    obj = body["object"] if "object" in body and isinstance(body["object"], dict) else body
    return stripe_event(event_type, obj, event_id="evt_test_1", created=T, **kw)


def test_customer_created_from_a_real_cli_capture() -> None:
    update = normalize(load_fixture("event.customer.created.inngest-cli-capture.json"))
    assert update.event_id == "evt_1KWTPTJKEym2H9Vg1CGtbZc8"
    assert update.event_time == 1645655651
    assert update.customer_id == "cus_LCtB7H0tTFBxEn"
    assert update.user_id is None
    assert update.standard == {}  # email, name, phone, address are all null in this capture
    assert update.custom == {"stripe_customer_id": "cus_LCtB7H0tTFBxEn"}
    assert update.tags == ["stripe-customer"]


def test_customer_fields_are_cleaned_for_usercom() -> None:
    obj = {
        "id": "cus_1",
        "email": "ada@example.com",
        "name": "Augusta Ada King Countess of Lovelace Byron " + "x" * 50,
        "phone": "0207 123 4567",  # not E.164: carried, then left out and reported by the destination
        "address": {"city": "London", "country": "GB"},
        "metadata": {"user_id": "u-42"},
    }
    update = normalize(stripe_event("customer.updated", obj, event_id="evt_c"))
    assert update.user_id == "u-42"
    assert update.standard["email"] == "ada@example.com"
    assert len(update.standard["first_name"]) <= 40
    assert update.standard["last_name"] == "x" * 40
    assert update.standard["phone_number"] == "02071234567"
    assert (update.standard["city"], update.standard["country"]) == ("London", "GB")


def test_e164_phone_is_sent() -> None:
    obj = {"id": "cus_1", "phone": "+44 20 7123 4567"}
    assert normalize(stripe_event("customer.created", obj, event_id="evt_p")).standard["phone_number"] == (
        "+442071234567"
    )


def test_identity_key_is_configurable() -> None:
    obj = {"id": "cus_1", "metadata": {"user_id": "wrong", "app_user": "right"}}
    assert normalize(stripe_event("customer.created", obj, event_id="evt_i"), "app_user").user_id == "right"


def test_customer_deleted_marks_billing_status() -> None:
    update = normalize(wrapped("customer.deleted", "openapi-fixtures3.deleted_customer.json"))
    assert update.customer_id == "cus_QXg1o8vcGmoR32"
    assert update.custom == {"billing_status": "deleted"}
    assert update.standard == {} and update.tags == []


def test_subscription_before_basil_legacy_price_amount() -> None:
    update = normalize(wrapped("customer.subscription.created", "pay-data.subscription.created.json"))
    assert update.customer_id == "cus_00000000000000"
    assert update.custom == {
        "subscription_status": "active",
        "plan": "FFBEGINNER_00000000000000",
        "plan_interval": "month",
        "mrr": 6.0,  # 300 cents x 2 seats, monthly
        "currency": "usd",
        "current_period_end": "2017-03-08T15:45:24Z",  # top-level before basil
        "cancel_at_period_end": False,
    }
    assert update.tags == ["subscriber"]


def test_subscription_after_basil_period_end_from_items() -> None:
    update = normalize(wrapped("customer.subscription.updated", "openapi-fixtures3.subscription.json"))
    assert update.custom["current_period_end"] == "2000-12-08T15:02:53Z"  # items.data[0].current_period_end
    assert update.custom["mrr"] == 20.0
    assert update.custom["cancel_at_period_end"] is True


def test_stripe_docs_subscription_update_event() -> None:
    update = normalize(load_fixture("event.customer.subscription.updated.stripe-docs-example.json"))
    assert update.custom["mrr"] == 42.42
    assert update.custom["current_period_end"] == "2023-05-05T04:26:54Z"
    assert update.custom["plan"] == "price_1Mqqb5Lt4dXK03v5cK9prani"


@pytest.mark.parametrize(
    ("status", "mrr", "tags"), [("active", 1000, ["subscriber"]), ("trialing", 0, ["subscriber", "trial"])]
)
def test_yearly_zero_decimal_subscription(status: str, mrr: float, tags: list[str]) -> None:
    """A trial bills nothing yet: Stripe's MRR leaves it out (docs.stripe.com/billing/subscriptions/analytics)."""
    obj = {
        "id": "sub_1",
        "customer": {"id": "cus_1", "object": "customer"},  # expanded reference
        "status": status,
        "currency": "jpy",
        "items": {
            "data": [
                {
                    "quantity": 1,
                    "current_period_end": 1_800_000_000,
                    "price": {
                        "id": "price_1",
                        "nickname": "Pro",
                        "unit_amount": 12000,
                        "currency": "jpy",
                        "recurring": {"interval": "year", "interval_count": 1},
                    },
                }
            ]
        },
    }
    update = normalize(stripe_event("customer.subscription.created", obj, event_id="evt_s"))
    assert update.customer_id == "cus_1"
    assert update.custom["mrr"] == mrr  # yen have no minor unit: 12000 a year is 1000 a month
    assert update.custom["plan"] == "Pro"
    assert update.tags == tags


@pytest.mark.parametrize("status", ["canceled", "incomplete_expired"])
def test_an_ended_subscription_updated_has_no_mrr_and_is_no_subscriber(status: str) -> None:
    event = wrapped("customer.subscription.updated", "pay-data.subscription.updated.json")
    event["data"]["object"]["status"] = status  # the fixture's own is canceled; its price bills 300 cents x 2
    update = normalize(event)
    assert (update.custom["subscription_status"], update.custom["mrr"]) == (status, 0)
    assert update.tags == []


def test_subscription_deleted_zeroes_mrr_and_tags_churned() -> None:
    update = normalize(wrapped("customer.subscription.deleted", "pay-data.subscription.deleted.json"))
    assert update.custom == {"subscription_status": "canceled", "mrr": 0}
    assert update.tags == ["churned"]


def test_trial_will_end() -> None:
    update = normalize(wrapped("customer.subscription.trial_will_end", "pay-data.subscription.trial_will_end.json"))
    assert update.custom == {"trial_end": "2022-11-20T19:19:43Z"}
    assert update.tags == ["trial-ending"]


def test_invoice_paid_after_basil() -> None:
    update = normalize(wrapped("invoice.paid", "openapi-fixtures3.invoice.json"))
    assert update.customer_id == "cus_QXg1o8vcGmoR32"
    assert update.custom == {"last_payment_at": T_ISO, "last_payment_amount": 0.0}  # not paid yet: event time
    assert update.tags == []  # paid nothing: no "paying" (a trial's first invoice is paid for 0 too)


def test_invoice_identity_from_subscription_metadata_in_both_shapes() -> None:
    basil = copy.deepcopy(load_fixture("pay-data.invoice.payment_failed.json")["object"])
    basil["parent"]["subscription_details"]["metadata"] = {"user_id": "u-basil"}
    update = normalize(stripe_event("invoice.payment_failed", basil, event_id="evt_b", created=T))
    assert update.user_id == "u-basil"
    assert update.custom == {"payment_failed_at": T_ISO}
    assert update.tags == ["payment-failed"]
    legacy = {
        "id": "in_1",
        "customer": "cus_1",
        "currency": "eur",
        "amount_paid": 1999,
        "subscription": "sub_1",
        "subscription_details": {"metadata": {"user_id": "u-legacy"}},
        "status_transitions": {"paid_at": 1_234_567_890},
    }
    update = normalize(stripe_event("invoice.paid", legacy, event_id="evt_l"))
    assert update.user_id == "u-legacy"
    assert update.custom == {"last_payment_at": "2009-02-13T23:31:30Z", "last_payment_amount": 19.99}


def test_checkout_session_completed() -> None:
    update = normalize(wrapped("checkout.session.completed", "pay-data.checkout.session.completed.json"))
    assert update.customer_id == "cus_M5wW9RPFk9xNZ5"
    assert update.standard == {"email": "chris@gorails.com"}
    assert update.tags == ["checkout-completed"]


def test_checkout_client_reference_id_names_the_user_only_when_trusted() -> None:
    obj = {"id": "cs_1", "customer": "cus_1", "client_reference_id": "u-7", "customer_details": {"email": "a@b.co"}}
    event = stripe_event("checkout.session.completed", obj, event_id="evt_x")
    assert normalize(event).user_id is None  # a Payment Link URL sets it: by default, the customer's identity
    trusted = read("stripe", event, trusted=frozenset({"stripe.client_reference_id"})).update
    assert trusted is not None and trusted.user_id == "u-7"
    with_metadata = {**obj, "metadata": {"user_id": "u-1"}}  # set server-side: always trusted, and first
    assert normalize(stripe_event("checkout.session.completed", with_metadata, event_id="evt_y")).user_id == "u-1"


def test_charge_refunded() -> None:
    update = normalize(wrapped("charge.refunded", "pay-data.charge.refunded.json"))
    assert update.customer_id == "cus_0dUMWLtzCTagWs"
    assert update.custom == {"last_refund_at": T_ISO, "last_refund_amount": 5.0}
    assert update.tags == ["refunded"]


def test_unmapped_event_types_are_ignored() -> None:
    result = read("stripe", load_fixture("event.charge.succeeded.inngest-cli-capture.json"), "user_id")
    assert result.update is None
    assert result.event_type == "charge.succeeded"


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda e: e.pop("id"), ("id",)),
        (lambda e: e.update(created="yesterday"), ("created",)),
        (lambda e: e["data"].pop("object"), ("data", "object")),
        (lambda e: e["data"]["object"].pop("items"), ("data", "object", "items")),
        (lambda e: e["data"]["object"].update(customer=42), ("data", "object", "customer")),
    ],
)
def test_payloads_that_do_not_fit_raise_field_messages(mutate: Any, path: tuple[str, ...]) -> None:
    event = wrapped("customer.subscription.updated", "pay-data.subscription.updated.json")
    mutate(event)
    with pytest.raises(ValidationError) as caught:
        read("stripe", event, "user_id")
    messages: Any = caught.value.messages
    for key in path:
        assert key in messages, messages
        messages = messages[key]


def test_unknown_fields_from_stripe_are_tolerated() -> None:
    event = wrapped("customer.subscription.updated", "pay-data.subscription.updated.json")
    event["brand_new_field"] = {"x": 1}
    event["data"]["object"]["another_new_field"] = True
    assert normalize(event).custom["subscription_status"] == "canceled"


@pytest.mark.parametrize(
    ("name", "expected"),
    [("Ada", ("Ada", None)), ("Ada Lovelace", ("Ada", "Lovelace")), ("  ", (None, None)), (None, (None, None))],
)
def test_split_name(name: str | None, expected: tuple[str | None, str | None]) -> None:
    assert split_name(name) == expected


@pytest.mark.parametrize(
    ("amount", "currency", "expected"), [(4242, "usd", 42.42), (500, "JPY", 500), (1234, "kwd", 1.234)]
)
def test_to_major_respects_currency_exponent(amount: int, currency: str, expected: float) -> None:
    assert to_major(amount, currency) == expected
