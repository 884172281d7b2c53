"""No silent drops: a value User.com's documented rules refuse is left out of the update, counted
(relay_values_dropped_total{attribute,reason}), logged at WARNING with the event id and listed for
the user's trace, and the rest of the update is delivered."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis import Redis

from service.config import Settings
from service.destinations.usercom.rules import screen
from service.devtools.usercom_sandbox import SandboxServer
from tests.conftest import an_update
from workers.delivery.context import DeliveryContext, configure
from workers.delivery.dropped import report_dropped
from workers.delivery.job import deliver_update
from workers.runner import build_context


@pytest.fixture
def ctx(settings: Settings, redis: Redis) -> Iterator[DeliveryContext]:
    context = build_context(settings, "usercom")
    configure(context)
    yield context
    context.redis.close()


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


def test_dropped_values_are_listed_per_event_for_the_trace(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    sandbox.state.seed(["u1"])
    good = an_update("evt_good", standard={"city": "Paris"}, custom={})
    bad = an_update("evt_bad", standard={"email": "nope"}, custom={})
    ctx.client.send("u1", {**good.standard, **bad.standard}, {}, [], None)
    listed = report_dropped(ctx.client, good, [bad], "u1", "live", 1)
    assert listed == [{"event_id": "evt_bad", "attribute": "email", "reason": "invalid_email"}]
