"""Paddle Billing, Lemon Squeezy (the shared real payloads) and Standard Webhooks events ->
normalized user updates."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from marshmallow import ValidationError

from service.core.update import UserUpdate
from tests.conftest import load_fixture, read, standard_event


def paddle(payload: dict[str, Any]) -> UserUpdate:
    update = read("paddle", payload).update
    assert update is not None
    return update


def lemon(payload: dict[str, Any]) -> UserUpdate:
    update = read("lemonsqueezy", payload).update
    assert update is not None
    return update


def test_paddle_subscription_created_from_the_real_payload() -> None:
    update = paddle(load_fixture("pay.subscription.created.json", "paddle_billing"))
    assert (update.source, update.event_id, update.event_type) == (
        "paddle",
        "evt_01h7ht60jy5hpdv5x8tfsaxje4",
        "subscription.created",
    )
    assert update.event_time == 1691741258  # occurred_at 2023-08-11T08:07:38Z
    assert (update.user_id, update.customer_id) == (None, "ctm_0123")
    assert update.custom == {
        "subscription_status": "active",
        "plan": "Monthly (per seat)",
        "plan_interval": "month",
        "mrr": 432.0,  # 10 seats x 32.40 + one 108.00 add-on, both monthly
        "currency": "usd",
        "current_period_end": "2023-09-11T08:07:35Z",
        "cancel_at_period_end": False,
    }
    assert update.tags == ["subscriber"]


def test_a_canceled_paddle_subscription_updated_has_no_mrr_and_is_no_subscriber() -> None:
    payload = load_fixture("pay.subscription.created.json", "paddle_billing")
    payload["event_type"] = "subscription.updated"
    payload["data"].update(status="canceled", canceled_at="2023-09-11T08:07:35Z")
    update = paddle(payload)
    assert (update.custom["subscription_status"], update.custom["mrr"]) == ("canceled", 0)
    assert update.tags == []


def test_paddle_identity_from_custom_data_only_when_trusted_and_scheduled_cancel() -> None:
    payload = load_fixture("pay.subscription.created.json", "paddle_billing")
    payload["event_type"] = "subscription.updated"
    payload["data"]["custom_data"] = {"user_id": "u_77"}
    payload["data"]["scheduled_change"] = {"action": "cancel", "effective_at": "2023-09-11T08:07:35Z"}
    update = paddle(payload)
    assert update.user_id is None and update.custom["cancel_at_period_end"] is True  # the browser sets it
    trusted = read("paddle", payload, trusted=frozenset({"paddle.custom_data"})).update
    assert trusted is not None and trusted.user_id == "u_77"


def test_paddle_customer_and_transaction() -> None:
    customer = {
        "event_id": "evt_c",
        "event_type": "customer.updated",
        "occurred_at": "2024-01-01T00:00:00Z",
        "data": {"id": "ctm_9", "name": "Ada King Lovelace", "email": "ada@example.com", "custom_data": None},
    }
    update = paddle(customer)
    assert update.standard == {"email": "ada@example.com", "first_name": "Ada King", "last_name": "Lovelace"}
    transaction = {
        "event_id": "evt_t",
        "event_type": "transaction.completed",
        "occurred_at": "2024-01-02T00:00:00Z",
        "data": {
            "id": "txn_1",
            "customer_id": "ctm_9",
            "currency_code": "JPY",
            "billed_at": "2024-01-01T12:00:00Z",
            "details": {"totals": {"total": "5000"}},
        },
    }
    assert paddle(transaction).custom == {"last_payment_at": "2024-01-01T12:00:00Z", "last_payment_amount": 5000.0}


def test_paddle_invalid_payloads_name_the_field() -> None:
    payload = load_fixture("pay.subscription.created.json", "paddle_billing")
    broken = copy.deepcopy(payload)
    del broken["data"]["customer_id"]
    with pytest.raises(ValidationError) as caught:
        read("paddle", broken)
    assert caught.value.messages == {"data": {"customer_id": ["Missing data for required field."]}}
    with pytest.raises(ValidationError, match="occurred_at"):
        read("paddle", {**payload, "occurred_at": "yesterday"})
    unmapped = read("paddle", {**payload, "event_type": "address.created"})
    assert unmapped.update is None and unmapped.event_id == payload["event_id"]


@pytest.mark.parametrize(
    ("fixture", "standard", "custom", "tags"),
    [
        (
            "pay.order_created.json",
            {"email": "dan@lemonsqueezy.com", "first_name": "Dan", "last_name": "R"},
            {"lemonsqueezy_customer_id": "1"},
            ["lemonsqueezy-customer"],
        ),
        (
            "pay.subscription_created.json",
            {"email": "dan@lemonsqueezy.com", "first_name": "Dan", "last_name": "R"},
            {
                "subscription_status": "on_trial",
                "plan": "Subscription One",
                "current_period_end": "2023-01-24T12:43:48Z",
                "cancel_at_period_end": False,
            },
            ["subscriber", "trial"],
        ),
        (
            "pay.subscription_payment_success.json",
            {},
            {"last_payment_at": "2023-01-18T12:16:24Z", "last_payment_amount": 9.99},
            ["paying"],
        ),
        (
            "pay.subscription_payment_refunded.json",
            {},
            {"last_refund_at": "2023-01-18T12:16:24Z", "last_refund_amount": 9.99},
            ["refunded"],
        ),
    ],
)
def test_lemonsqueezy_real_payloads(
    fixture: str, standard: dict[str, Any], custom: dict[str, Any], tags: list[str]
) -> None:
    payload = load_fixture(fixture, "lemon_squeezy")
    update = lemon(payload)
    assert update.source == "lemonsqueezy" and update.event_type == payload["meta"]["event_name"]
    assert (update.standard, update.custom, update.tags) == (standard, custom, tags)
    assert update.customer_id == str(payload["data"]["attributes"]["customer_id"])


@pytest.mark.parametrize(
    ("status", "tags"), [("expired", []), ("cancelled", ["subscriber"]), ("active", ["subscriber"])]
)
def test_an_expired_lemonsqueezy_subscription_updated_is_no_subscriber(status: str, tags: list[str]) -> None:
    """Cancelled runs until its period ends; expired has ended (subscription_expired tags it churned)."""
    payload = load_fixture("pay.subscription_updated.json", "lemon_squeezy")
    payload["data"]["attributes"]["status"] = status
    assert lemon(payload).tags == tags


def test_lemonsqueezy_event_id_is_stable_per_delivery_and_changes_with_the_resource() -> None:
    payload = load_fixture("pay.subscription_updated.json", "lemon_squeezy")
    first = lemon(payload)
    assert first.event_id == "subscription_updated-subscriptions-1-1673959431000"
    assert lemon(copy.deepcopy(payload)).event_id == first.event_id  # a retry: same id, deduplicated
    payload["data"]["attributes"]["updated_at"] = "2023-01-18T00:00:00.000000Z"
    later = lemon(payload)
    assert later.event_id != first.event_id and later.event_time > first.event_time


def test_lemonsqueezy_identity_from_checkout_custom_data_only_when_trusted() -> None:
    payload = load_fixture("pay.subscription_created.json", "lemon_squeezy")
    payload["meta"]["custom_data"] = {"user_id": "u_42"}
    assert lemon(payload).user_id is None  # the buyer sets it: by default, the customer's identity
    update = read("lemonsqueezy", payload, trusted=frozenset({"lemonsqueezy.custom_data"})).update
    assert update is not None and update.user_id == "u_42" and update.hint == "user:u_42"


def test_lemonsqueezy_invalid_payload() -> None:
    payload = load_fixture("pay.subscription_created.json", "lemon_squeezy")
    del payload["data"]["attributes"]["updated_at"]
    with pytest.raises(ValidationError) as caught:
        read("lemonsqueezy", payload)
    assert caught.value.messages == {"data": {"attributes": {"updated_at": ["Missing data for required field."]}}}


def test_standard_user_updated_event() -> None:
    event = standard_event(
        attributes={"email": "ada@example.com", "first_name": "Ada", "plan": "pro", "seats": 3, "beta": True},
        tags=["beta", "beta", "vip"],
    )
    update = read("standard", event, webhook_id="msg_1").update
    assert update is not None
    assert (update.source, update.event_id, update.user_id, update.event_time) == (
        "standard",
        "msg_1",
        "u1",
        1795428000,
    )
    assert update.standard == {"email": "ada@example.com", "first_name": "Ada"}
    assert update.custom == {"plan": "pro", "seats": 3, "beta": True}
    assert update.tags == ["beta", "vip"]


def test_standard_other_event_types_are_not_mapped() -> None:
    assert read("standard", {**standard_event(), "type": "user.deleted"}, webhook_id="msg_2").update is None


@pytest.mark.parametrize(
    ("event", "where"),
    [
        (standard_event(attributes={"email": "not-an-email"}), {"data": {"attributes": {"email": ["Not a valid"]}}}),
        (standard_event(attributes={"Bad Name": 1}), {"data": {"attributes": {"Bad Name": ["Not a User.com"]}}}),
        (
            standard_event(attributes={"plan": {"nested": 1}}),
            {"data": {"attributes": {"plan": {"value": ["Must be a"]}}}},
        ),
        (standard_event(attributes={"user_id": "other"}), {"data": {"attributes": {"user_id": ["Not a User.com"]}}}),
        ({"type": "user.updated", "data": {"user_id": "u1"}}, {"timestamp": ["Missing data"]}),
        (standard_event(user_id=""), {"data": {"user_id": ["The user id is blank"]}}),
        (standard_event(user_id="   "), {"data": {"user_id": ["The user id is blank"]}}),
        (standard_event(user_id="u\n1"), {"data": {"user_id": ["The user id holds a control or format character"]}}),
        (standard_event(user_id="u" * 256), {"data": {"user_id": ["The user id is longer than 255"]}}),
        (standard_event(user_id="\u202e1-toor"), {"data": {"user_id": ["The user id holds a control or format"]}}),
        (standard_event(user_id=".."), {"data": {"user_id": ["The user id is . or .."]}}),
    ],
)
def test_standard_invalid_events_name_the_field(event: dict[str, Any], where: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        read("standard", event, webhook_id="msg_3")
    assert _matches(caught.value.messages, where), caught.value.messages


def _matches(messages: Any, expected: Any) -> bool:
    """Each expected path exists and its first message starts with the expected text."""
    if isinstance(expected, dict):
        return isinstance(messages, dict) and all(_matches(messages.get(k), v) for k, v in expected.items())
    return isinstance(messages, list) and any(str(m).startswith(expected[0]) for m in messages)


@pytest.mark.parametrize("bad", [{"a": 1}, ["u1"], 1.5, "u\n1", "\u202eu1", "u" * 256, ".", ".."])
def test_a_user_id_that_cannot_be_one_is_refused_from_metadata_and_ignored_from_a_buyer_s_field(bad: Any) -> None:
    """From Stripe metadata (set server-side): the event is invalid, with the reason. From a field a buyer
    sets (Lemon Squeezy's checkout custom_data): left out, the customer's identity applies, even trusted."""
    event = {
        "id": "evt_odd_id",
        "type": "customer.updated",
        "created": 1700000000,
        "data": {"object": {"id": "cus_1", "object": "customer", "metadata": {"user_id": bad}}},
    }
    with pytest.raises(ValidationError) as caught:
        read("stripe", event)
    assert list(caught.value.messages["data"]["object"]) == ["user_id"], caught.value.messages
    payload = load_fixture("pay.subscription_created.json", "lemon_squeezy")
    payload["meta"]["custom_data"] = {"user_id": bad}
    update = read("lemonsqueezy", payload, trusted=frozenset({"lemonsqueezy.custom_data"})).update
    assert update is not None and update.user_id is None and update.customer_id is not None


def test_a_user_id_given_as_an_integer_is_its_digits() -> None:
    payload = load_fixture("pay.subscription_created.json", "lemon_squeezy")
    payload["meta"]["custom_data"] = {"user_id": 42}
    update = read("lemonsqueezy", payload, trusted=frozenset({"lemonsqueezy.custom_data"})).update
    assert update is not None and update.user_id == "42"
