"""No silent drops: a value User.com's documented rules refuse is left out of the update, counted
(relay_values_dropped_total{attribute,reason}), logged at WARNING with the event id and listed for
the user's trace, and the rest of the update is delivered."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from prometheus_client import REGISTRY
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from service import create_app
from service.config import Settings
from service.destinations.usercom.rules import screen
from service.destinations.userkit.client import screen as userkit_screen
from service.devtools.usercom_sandbox import SandboxServer
from service.store import keys
from tests.conftest import an_update, sign, stripe_event
from workers.delivery.context import DeliveryContext
from workers.delivery.dropped import report_dropped
from workers.delivery.job import deliver_update

ADMIN = {"Authorization": "Bearer admin-token-for-dropped-values"}


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    return Settings.from_env({**env, "RELAY_ADMIN_TOKEN": ADMIN["Authorization"].split()[1]})


def dropped_count(attribute: str, reason: str) -> float:
    value = REGISTRY.get_sample_value("relay_values_dropped_total", {"attribute": attribute, "reason": reason})
    return value or 0.0


@pytest.mark.parametrize(
    ("attribute", "value", "reason"),
    [
        ("email", "not-an-email", "invalid_email"),
        ("phone_number", "0207 123 4567", "invalid_phone"),
        ("first_name", "x" * 41, "name_too_long"),
        ("last_name", "y" * 41, "name_too_long"),
        ("favourite_colour", "blue", "unknown_attribute"),
        ("gender", "robot", "invalid_choice"),
        ("gender", 4, "invalid_choice"),
        ("gender", True, "invalid_choice"),
        ("gender", 2.0, "invalid_choice"),
        ("status", "admin", "invalid_choice"),
        ("unsubscribed", "yes", "not_a_boolean"),
        ("notifications", 1, "not_a_boolean"),
        ("score", "10", "not_an_integer"),
        ("score", 1.5, "not_an_integer"),
        ("country", 48, "not_a_string"),
    ],
)
def test_a_value_the_rules_refuse_is_left_out_counted_logged_and_the_rest_delivered(
    ctx: DeliveryContext,
    sandbox: SandboxServer,
    caplog: pytest.LogCaptureFixture,
    attribute: str,
    value: Any,
    reason: str,
) -> None:
    sandbox.state.seed(["u1"])
    before = dropped_count(attribute, reason)
    item = an_update("evt_bad_value", standard={attribute: value, "city": "Paris"}, custom={})
    assert ctx.store.accept(item)
    with caplog.at_level(logging.WARNING):
        assert deliver_update(ctx, item) == "delivered"
    [sent] = [r["body"] for r in sandbox.state.requests]
    assert sent == {"city": "Paris"}  # the rest of the update went out, the value did not
    assert sandbox.state.user_by_custom_id("u1")["city"] == "Paris"  # type: ignore[index]
    assert dropped_count(attribute, reason) == before + 1
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING and attribute in r.getMessage()]
    assert record.event_id == "evt_bad_value" and record.reason == reason  # type: ignore[attr-defined]
    assert ctx.store.dead_letters() == [] and ctx.store.ledger()["delivered"] == 1


def test_null_clears_and_valid_values_pass() -> None:
    standard = {"email": "ada@example.com", "phone_number": "+442071234567", "first_name": "A" * 40, "city": None}
    assert screen(standard) == (standard, [])
    typed = {"gender": 3, "status": 2, "unsubscribed": False, "notifications": True, "score": 0}
    assert screen(typed) == (typed, [])


def test_the_words_user_com_reads_choices_back_as_are_sent_as_their_codes(
    ctx: DeliveryContext, sandbox: SandboxServer
) -> None:
    sandbox.state.seed(["u1"])
    item = an_update("evt_words", standard={"gender": "female", "status": "user"}, custom={})
    assert ctx.store.accept(item)
    assert deliver_update(ctx, item) == "delivered"
    [sent] = [r["body"] for r in sandbox.state.requests]
    assert sent == {"gender": 3, "status": 2}
    user = sandbox.state.user_by_custom_id("u1")
    assert user is not None and (user["gender"], user["status"]) == ("female", "user")


def test_dropped_values_are_listed_per_event_for_the_trace(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    sandbox.state.seed(["u1"])
    good = an_update("evt_good", standard={"city": "Paris"}, custom={})
    bad = an_update("evt_bad", standard={"email": "nope"}, custom={})
    ctx.client.send("u1", {**good.standard, **bad.standard}, {}, [], None)
    listed = report_dropped(ctx.client.last_dropped, good, [bad], "u1", "live", 1)
    assert listed == [{"event_id": "evt_bad", "attribute": "email", "reason": "invalid_email"}]


def test_a_stripe_email_user_com_would_refuse_is_reported_not_lost(
    ctx: DeliveryContext, settings: Settings, sandbox: SandboxServer
) -> None:
    """The finding as a new user met it: a customer.updated with "not-an-email" was logged as
    delivered and the email stayed null, with no trace of why."""
    before = dropped_count("email", "invalid_email")
    obj = {"id": "cus_bad_email", "email": "not-an-email", "name": "Ada Lovelace", "metadata": {"user_id": "u_mail"}}
    body = json.dumps(stripe_event("customer.updated", obj, event_id="evt_bad_email")).encode()
    client = create_app(settings).test_client()
    answer = client.post(
        "/webhooks/stripe", data=body, headers={"Stripe-Signature": sign(body), "Content-Type": "application/json"}
    )
    assert answer.status_code == 202, answer.get_json()
    SimpleWorker([ctx.queues[keys.LIVE]], connection=ctx.redis, serializer=JSONSerializer).work(burst=True)
    user = sandbox.state.user_by_custom_id("u_mail")
    assert user is not None and user["first_name"] == "Ada" and user["email"] is None
    assert dropped_count("email", "invalid_email") == before + 1
    [entry] = json.loads(client.get("/admin/users/u_mail/trace", headers=ADMIN).data)["entries"]
    assert entry["dropped"] == [{"name": "email", "reason": "invalid_email", "event_id": "evt_bad_email"}]
    assert entry["attributes"]["first_name"] == "Ada" and "email" not in entry["attributes"]  # what was sent


def test_userkit_leaves_out_a_malformed_email_or_phone() -> None:
    kept, dropped = userkit_screen({"email": "not-an-email", "phone_number": "0207", "first_name": "Ada"})
    assert kept == {"first_name": "Ada"}
    assert [(d.attribute, d.reason) for d in dropped] == [("email", "invalid_email"), ("phone_number", "invalid_phone")]
