"""What a subscription is worth, as the providers define it: MRR counts what bills (Stripe's analytics:
active and past_due subscriptions, metered prices left out), and a value the event cannot tell is not
sent (rather than a wrong one)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from service.backfill.paddle_reader import rfc3339
from service.backfill.paddle_sync import snapshot_event as paddle_snapshot
from service.backfill.sync import ReadTimes
from service.backfill.sync import snapshot_event as stripe_snapshot
from tests.conftest import load_fixture, read, stripe_event

T = 1_700_000_000


def stripe_subscription(status: str = "active", **changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": "sub_1",
        "customer": "cus_1",
        "status": status,
        "currency": "usd",
        "metadata": {"user_id": "u1"},
        "items": {
            "data": [
                {
                    "quantity": 2,
                    "current_period_end": T + 30 * 86400,
                    "price": {
                        "id": "price_1",
                        "currency": "usd",
                        "unit_amount": 1000,
                        "recurring": {"interval": "month", "interval_count": 1},
                    },
                }
            ]
        },
    }
    obj.update(changes)
    return obj


def stripe_custom(obj: dict[str, Any]) -> dict[str, Any]:
    update = read("stripe", stripe_event("customer.subscription.updated", obj, event_id="evt_1", created=T)).update
    assert update is not None
    return {**update.custom, "tags": update.tags}


@pytest.mark.parametrize(
    ("status", "mrr", "subscriber"),
    [
        ("active", 20.0, True),
        ("past_due", 20.0, True),  # still billed, payment being retried
        ("trialing", 0.0, True),
        ("incomplete", 0.0, False),  # its first payment never came
        ("paused", 0.0, False),
        ("unpaid", 0.0, False),
        ("canceled", 0.0, False),
    ],
)
def test_stripe_mrr_counts_only_what_bills(status: str, mrr: float, subscriber: bool) -> None:
    custom = stripe_custom(stripe_subscription(status))
    assert (custom["mrr"], "subscriber" in custom["tags"]) == (mrr, subscriber)


def test_a_metered_price_is_left_out_of_mrr() -> None:
    obj = stripe_subscription()
    metered = copy.deepcopy(obj["items"]["data"][0])
    metered["price"].update(id="price_usage", unit_amount=5, recurring={"interval": "month", "usage_type": "metered"})
    obj["items"]["data"].append(metered)
    assert stripe_custom(obj)["mrr"] == 20.0


@pytest.mark.parametrize(
    "price_change",
    [
        {"unit_amount": None, "billing_scheme": "tiered"},  # its amount is in tiers, not in the event
        {"currency": "eur"},  # another currency than the subscription's: its amount there is not in the event
    ],
    ids=["tiered", "other-currency"],
)
def test_an_mrr_the_event_cannot_tell_is_not_sent(price_change: dict[str, Any]) -> None:
    obj = stripe_subscription()
    obj["items"]["data"][0]["price"].update(price_change)
    custom = stripe_custom(obj)
    assert "mrr" not in custom and custom["subscription_status"] == "active"


def test_items_of_several_periods_end_the_subscription_at_the_earliest() -> None:
    """basil: periods are per item; cancel_at_period_end cancels at the earliest item period end."""
    obj = stripe_subscription(cancel_at_period_end=True)
    yearly = copy.deepcopy(obj["items"]["data"][0])
    yearly["current_period_end"] = T + 365 * 86400
    yearly["price"].update(id="price_yearly", recurring={"interval": "year"})
    obj["items"]["data"].append(yearly)
    assert stripe_custom(obj)["current_period_end"] == "2023-12-14T22:13:20Z"  # T + 30 days


def paddle_subscription(status: str) -> dict[str, Any]:
    payload = load_fixture("pay.subscription.created.json", "paddle_billing")
    payload["event_type"] = "subscription.updated"
    payload["data"]["status"] = status
    return payload


@pytest.mark.parametrize(
    ("status", "mrr", "subscriber"),
    [("active", 432.0, True), ("past_due", 432.0, True), ("trialing", 0.0, True), ("paused", 0.0, False)],
)
def test_paddle_mrr_counts_only_what_bills(status: str, mrr: float, subscriber: bool) -> None:
    update = read("paddle", paddle_subscription(status)).update
    assert update is not None
    assert (update.custom["mrr"], "subscriber" in update.tags) == (mrr, subscriber)


def test_a_paddle_price_in_another_currency_leaves_mrr_unsent() -> None:
    """Charged as a country's override or Paddle's conversion: the event does not say which."""
    payload = paddle_subscription("active")
    payload["data"]["currency_code"] = "EUR"
    update = read("paddle", payload).update
    assert update is not None and "mrr" not in update.custom and update.custom["currency"] == "eur"


def paddle_transaction(totals: dict[str, str]) -> dict[str, Any]:
    return {
        "event_id": "evt_t",
        "event_type": "transaction.completed",
        "occurred_at": "2024-01-02T00:00:00Z",
        "data": {"id": "txn_1", "customer_id": "ctm_9", "currency_code": "USD", "details": {"totals": totals}},
    }


def test_a_paddle_payment_is_what_was_paid_after_credits() -> None:
    """Paddle's changelog (transaction totals, grand_total): total 165.00, 10.00 of credit, 155.00 paid."""
    update = read("paddle", paddle_transaction({"total": "16500", "credit": "1000", "grand_total": "15500"})).update
    assert update is not None and update.custom["last_payment_amount"] == 155.0


@pytest.mark.parametrize(
    ("status", "subscriber"),
    [
        ("on_trial", True),
        ("active", True),
        ("past_due", True),
        ("cancelled", True),
        ("paused", False),
        ("unpaid", False),
        ("expired", False),
    ],
)
def test_a_lemon_squeezy_subscriber_is_one_the_subscription_still_serves(status: str, subscriber: bool) -> None:
    """ "cancelled" runs until its period ends; paused collects nothing; unpaid failed every retry."""
    payload = load_fixture("pay.subscription_updated.json", "lemon_squeezy")
    payload["data"]["attributes"]["status"] = status
    update = read("lemonsqueezy", payload).update
    assert update is not None and ("subscriber" in update.tags) == subscriber


@pytest.mark.parametrize(("amount", "paying"), [(0, False), (1200, True)])
def test_a_payment_of_nothing_does_not_tag_paying(amount: int, paying: bool) -> None:
    """A trial's first invoice is paid, for 0 (Stripe's trials); the customer has paid nothing yet."""
    invoice = {"id": "in_1", "customer": "cus_1", "currency": "usd", "amount_paid": amount, "amount_due": amount}
    update = read("stripe", stripe_event("invoice.paid", invoice, event_id="evt_i", created=T)).update
    assert update is not None
    assert ("paying" in update.tags, update.custom["last_payment_amount"]) == (paying, amount / 100)
    paddle = read("paddle", paddle_transaction({"total": str(amount)})).update
    assert paddle is not None and ("paying" in paddle.tags) == paying


@pytest.mark.parametrize(
    ("status", "before_its_read"),
    [
        ("active", False),
        ("past_due", False),
        ("trialing", False),
        ("incomplete", True),
        ("paused", True),
        ("unpaid", True),
        ("canceled", True),
    ],
)
def test_a_sync_dates_a_subscription_that_makes_no_subscriber_before_its_run(
    status: str, before_its_read: bool
) -> None:
    """Read in the run's first second, or on a later page than the customer's live subscription, it must
    neither win the tie (broken by event id, arbitrary for a snapshot) nor outrank that one's read time,
    and take the subscriber away."""
    times = ReadTimes(page=T + 5, run=T)  # a page read five seconds into the run
    stripe = stripe_snapshot("subscriptions", {**stripe_subscription(status), "created": T - 100}, times)
    assert stripe["created"] == (T - 1 if before_its_read else T + 5)
    paddle_status = {"unpaid": "past_due", "incomplete": "paused"}.get(status, status)  # Paddle's own statuses
    paddle = paddle_snapshot("subscriptions", {"id": "sub_1", "status": paddle_status}, times)
    paddle_before = paddle_status not in ("active", "past_due", "trialing")
    assert paddle["occurred_at"] == rfc3339(T - 1 if paddle_before else T + 5)


def test_a_scheduled_cancel_is_reported_and_cleared_once_taken_back() -> None:
    """Since 2025-07-30.basil a cancel may be scheduled with cancel_at and cancel_at_period_end false."""
    scheduled = stripe_custom(stripe_subscription(cancel_at=T + 86400, cancel_at_period_end=False))
    assert (scheduled["cancel_at"], scheduled["cancel_at_period_end"]) == ("2023-11-15T22:13:20Z", False)
    taken_back = stripe_custom(stripe_subscription(cancel_at=None, cancel_at_period_end=False))
    assert "cancel_at" in taken_back and taken_back["cancel_at"] is None  # cleared at the destination
    unsaid = stripe_custom(stripe_subscription())  # an object without the field: nothing sent
    assert "cancel_at" not in unsaid


def coupon(duration: str, **off: Any) -> dict[str, Any]:
    return {"id": "di_1", "object": "discount", "coupon": {"id": "c", "duration": duration, **off}}


@pytest.mark.parametrize(
    ("discounts", "mrr"),
    [
        ({"discount": coupon("forever", percent_off=50)}, 10.0),  # Stripe: "will halve that subscription's MRR"
        ({"discount": coupon("once", percent_off=50)}, 20.0),  # only the next invoice
        ({"discounts": [coupon("forever", amount_off=500, currency="usd")]}, 15.0),  # 5.00 off each invoice
        ({"discount": coupon("forever", percent_off=25), "discounts": [coupon("forever", percent_off=25)]}, 15.0),
        ({"discounts": ["di_1"]}, 20.0),  # an id only: what it takes off, the event does not say
        ({"discounts": [coupon("forever", amount_off=500, currency="eur")]}, None),  # another currency
    ],
    ids=["percent-forever", "once", "amount-forever", "same-discount-twice", "id-only", "other-currency"],
)
def test_a_coupon_for_good_comes_off_mrr(discounts: dict[str, Any], mrr: float | None) -> None:
    custom = stripe_custom(stripe_subscription(**discounts))
    assert custom.get("mrr") == mrr


@pytest.mark.parametrize(("mode", "subscriber"), [("free", True), ("void", False)])
def test_a_lemon_squeezy_subscription_paused_for_free_still_serves(mode: str, subscriber: bool) -> None:
    """Lemon Squeezy's pause modes: `free` offers the services for free while payment collection halts;
    `void` is for when the services cannot be offered (its subscription object's `pause` attribute)."""
    payload = load_fixture("pay.subscription_updated.json", "lemon_squeezy")
    payload["data"]["attributes"].update(status="paused", pause={"mode": mode, "resumes_at": None})
    update = read("lemonsqueezy", payload).update
    assert update is not None and ("subscriber" in update.tags) == subscriber


def test_a_refunded_lemon_squeezy_order_is_reported() -> None:
    """Lemon Squeezy's order_refunded: "a full or partial refund is made on an order" (a one-off purchase has no
    subscription invoice, so no subscription_payment_refunded); the order carries refunded_amount."""
    payload = load_fixture("pay.order_created.json", "lemon_squeezy")
    payload["meta"]["event_name"] = "order_refunded"
    payload["data"]["attributes"].update(
        status="partial_refund", refunded_amount=1000, updated_at="2023-01-20T08:00:00.000000Z"
    )
    update = read("lemonsqueezy", payload).update
    assert update is not None
    assert (update.custom, update.tags) == (
        {"last_refund_at": "2023-01-20T08:00:00Z", "last_refund_amount": 10.0},
        ["refunded"],
    )


def test_a_paddle_item_in_trial_is_left_out_of_mrr() -> None:
    """Paddle's subscription item status: trialing, "Paddle has not billed for it" (an item can have a trial
    of its own while the subscription is active)."""
    payload = paddle_subscription("active")
    payload["data"]["items"][1]["status"] = "trialing"  # the 108.00 add-on
    update = read("paddle", payload).update
    assert update is not None and update.custom["mrr"] == 324.0


@pytest.mark.parametrize(
    ("ends_at", "mrr"),
    [(None, None), ("2023-11-11T08:07:35.449123Z", 432.0)],
    ids=["recurs-forever", "for-some-periods"],
)
def test_a_paddle_discount_for_good_leaves_mrr_unsent(ends_at: str | None, mrr: float | None) -> None:
    """Paddle's subscription discount: ends_at "null where a discount recurs forever"; the event names the
    discount (its id) but not what it takes off. One for some periods only leaves mrr whole, as a Stripe
    coupon that is not for good does."""
    payload = paddle_subscription("active")
    payload["data"]["discount"] = {"id": "dsc_01h7ht5z5wdg9pz18jx1fagp8k", "starts_at": "2023-08-11T08:07:35Z"}
    payload["data"]["discount"]["ends_at"] = ends_at
    update = read("paddle", payload).update
    assert update is not None and update.custom.get("mrr") == mrr
    paused = paddle_subscription("paused")
    paused["data"]["discount"] = payload["data"]["discount"]
    update = read("paddle", paused).update
    assert update is not None and update.custom["mrr"] == 0.0  # nothing bills, whatever comes off


def test_a_paddle_invoice_is_paid_when_its_payment_was_captured_not_when_it_was_billed() -> None:
    """Paddle's transaction: billed_at is "when this transaction was marked as billed" (an invoice is billed
    when issued, and paid later); payments[].captured_at is "when this payment was captured"."""
    payload = paddle_transaction({"total": "16500", "grand_total": "16500"})
    payload["occurred_at"] = "2024-01-20T10:00:05Z"
    payload["data"].update(
        collection_mode="manual",
        billed_at="2024-01-02T00:00:00Z",
        payments=[
            {"status": "captured", "captured_at": "2024-01-20T10:00:00Z"},
            {"status": "error", "captured_at": None},
        ],
    )
    update = read("paddle", payload).update
    assert update is not None and update.custom["last_payment_at"] == "2024-01-20T10:00:00Z"
    payload["data"]["payments"] = []  # paid offline (a bank transfer): when it completed
    update = read("paddle", payload).update
    assert update is not None and update.custom["last_payment_at"] == "2024-01-20T10:00:05Z"


def test_a_past_due_lemon_squeezy_subscription_sends_no_period_end() -> None:
    """Lemon Squeezy's renews_at is the end of the current billing cycle, except past_due: "renews_at will
    reflect the next renewal charge attempt" (a retry days away is no period end)."""
    payload = load_fixture("pay.subscription_updated.json", "lemon_squeezy")
    payload["data"]["attributes"].update(status="past_due", trial_ends_at=None)
    update = read("lemonsqueezy", payload).update
    assert update is not None and "current_period_end" not in update.custom
    payload["data"]["attributes"]["status"] = "active"
    update = read("lemonsqueezy", payload).update
    assert update is not None and update.custom["current_period_end"] == "2023-01-24T12:43:48Z"


def paddle_adjustment(action: str, status: str, event_type: str = "adjustment.updated") -> dict[str, Any]:
    """Paddle's adjustment entity (API reference, Adjustments): a refund of 165.00 of a transaction."""
    return {
        "event_id": "evt_01hv8x2a0ph5s3n0m5r5y0z0a1",
        "event_type": event_type,
        "occurred_at": "2024-04-12T10:18:49.621022Z",
        "notification_id": "ntf_01hv8x2a5ccyqk9t8z6jd8k0xq",
        "data": {
            "id": "adj_01hv8x1wz9zhdsybf3ev9mj3cw",
            "action": action,
            "type": "full",
            "transaction_id": "txn_01hv8wptq8987qeep44cyrewp9",
            "subscription_id": "sub_01hv8x29kz0t586xy6zn1a62ny",
            "customer_id": "ctm_01hv8wt8nffez4p2t6typn4a5j",
            "reason": "error",
            "currency_code": "USD",
            "status": status,
            "totals": {"subtotal": "15000", "tax": "1500", "total": "16500", "fee": "0", "earnings": "0"},
            "created_at": "2024-04-12T10:15:57.888183Z",
            "updated_at": "2024-04-12T10:18:47.254217Z",
        },
    }


@pytest.mark.parametrize("event_type", ["adjustment.created", "adjustment.updated"])
def test_a_paddle_refund_is_reported_once_paddle_approved_it(event_type: str) -> None:
    """ "Most refunds for live accounts require Paddle approval and are created as pending_approval.
    adjustment.updated occurs when the status changes to approved or rejected" (Paddle: adjustment.created)."""
    update = read("paddle", paddle_adjustment("refund", "approved", event_type)).update
    assert update is not None and update.customer_id == "ctm_01hv8wt8nffez4p2t6typn4a5j"
    assert update.custom == {"last_refund_at": "2024-04-12T10:18:47Z", "last_refund_amount": 165.0}
    assert update.tags == ["refunded"]


@pytest.mark.parametrize(
    ("action", "status"),
    [("refund", "pending_approval"), ("refund", "rejected"), ("credit", "approved"), ("chargeback", "approved")],
)
def test_a_paddle_adjustment_that_refunds_nothing_yet_sends_nothing(action: str, status: str) -> None:
    """Answered "ignored": an update with nothing in it would be an empty call to User.com."""
    assert read("paddle", paddle_adjustment(action, status)).update is None
