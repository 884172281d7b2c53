"""Correctly signed webhooks that must still be refused: event times from the future, Lemon
Squeezy replays, and payloads built to break the relay (never a 5xx)."""

from __future__ import annotations

import copy
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from redis import Redis

from service import create_app
from service.config import Settings
from service.store.ledger import Store
from tests.conftest import lemonsqueezy_headers, load_fixture, sign, standard_event, standard_headers, stripe_event

HOUR = 3600


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def post(client: Any, source: str, payload: Any, msg_id: str = "msg_h1") -> Any:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {
        "stripe": lambda: {"Stripe-Signature": sign(body)},
        "standard": lambda: standard_headers(body, msg_id),
        "lemonsqueezy": lambda: lemonsqueezy_headers(body),
    }[source]()
    return client.post(f"/webhooks/{source}", data=body, headers=headers, content_type="application/json")


def code(response: Any) -> str:
    return response.get_json()["error"]["code"]


def balanced(redis: Redis, settings: Settings) -> dict[str, int]:
    counts = Store.from_settings(redis, settings).ledger()
    outcomes = counts["delivered"] + counts["coalesced"] + counts["ignored"] + counts["dead_lettered"]
    assert counts["received"] == outcomes + counts["in_flight"], counts
    return counts


def client_with(env: dict[str, str], **overrides: str) -> Any:
    app = create_app(Settings.from_env({**env, **overrides}))
    app.testing = True
    return app.test_client()


# 3. event times from the future


@pytest.mark.parametrize("when", ["9999-01-01T00:00:00Z", iso(time.time() + HOUR)], ids=["year-9999", "an-hour-ahead"])
def test_a_standard_event_from_the_future_is_refused_and_dead_lettered(
    client: Any, redis: Redis, settings: Settings, when: str
) -> None:
    response = post(client, "standard", standard_event("u1", event_time=when, attributes={"plan": "pinned"}))
    assert response.status_code == 422 and code(response) == "invalid_payload"
    assert "event_time" in response.get_json()["error"]["details"]
    assert balanced(redis, settings)["dead_lettered"] == 1
    assert Store.from_settings(redis, settings).dlq().summary()["by_reason"] == {"invalid_payload": 1}


def test_a_stripe_event_from_the_future_is_refused(client: Any) -> None:
    event = stripe_event(
        "customer.created",
        {"id": "cus_1", "email": "a@example.com", "metadata": {"user_id": "u1"}},
        event_id="evt_future",
    )
    event["created"] = int(time.time()) + HOUR
    response = post(client, "stripe", event)
    assert response.status_code == 422 and code(response) == "invalid_payload"


def test_a_little_clock_skew_is_allowed_and_configurable(env: dict[str, str], redis: Redis) -> None:
    ahead = standard_event("u1", event_time=iso(time.time() + 60), attributes={"plan": "pro"})
    client = client_with(env)
    assert post(client, "standard", ahead, "msg_skew_1").status_code == 202
    later = standard_event("u1", event_time=iso(time.time() + HOUR), attributes={"plan": "pro"})
    assert post(client, "standard", later, "msg_skew_2").status_code == 422
    lenient = client_with(env, RELAY_MAX_CLOCK_SKEW_SECONDS=str(2 * HOUR))
    assert post(lenient, "standard", later, "msg_skew_3").status_code == 202


# 4. Lemon Squeezy signs no time: a captured delivery replayed after the dedup memory expired


def lemon(updated_at: float) -> dict[str, Any]:
    event = load_fixture("pay.subscription_created.json", "lemon_squeezy")
    event["data"]["attributes"]["updated_at"] = iso(updated_at)
    return event


def test_a_lemon_squeezy_event_older_than_the_dedup_window_is_refused(
    client: Any, redis: Redis, settings: Settings
) -> None:
    old = lemon(time.time() - settings.dedup_ttl_seconds - HOUR)
    response = post(client, "lemonsqueezy", old)
    assert response.status_code == 401 and code(response) == "signature_expired"
    assert "dedup window" in response.get_json()["error"]["message"]
    assert balanced(redis, settings)["received"] == 0
    assert post(client, "lemonsqueezy", lemon(time.time() - settings.dedup_ttl_seconds + HOUR)).status_code == 202


def test_the_lemon_squeezy_window_follows_the_dedup_setting(env: dict[str, str], redis: Redis) -> None:
    four_days_ago = lemon(time.time() - 4 * 24 * HOUR)
    assert post(client_with(env), "lemonsqueezy", four_days_ago).status_code == 202
    redis.flushall()
    short = client_with(env, RELAY_DEDUP_TTL_SECONDS=str(3 * 24 * HOUR))
    assert post(short, "lemonsqueezy", four_days_ago).status_code == 401


# 8. correctly signed bodies built to break a later step: 422 and dead-lettered, never a 5xx

CUSTOMER = {"id": "cus_1", "email": "a@example.com", "metadata": {"user_id": "u1"}}
STANDARD_AT = '{"type":"user.updated","timestamp":"2026-11-23T10:00:00Z","data":{"user_id":"u1","attributes":%s}}'


def subscription(**price: Any) -> dict[str, Any]:
    sub = copy.deepcopy(load_fixture("pay-data.subscription.updated.json")["object"])
    sub["metadata"] = {"user_id": "u1"}
    sub["items"]["data"][0]["price"].update(price)
    return stripe_event("customer.subscription.updated", sub, event_id="evt_shape", created=int(time.time()) - 60)


def customer(**metadata: Any) -> dict[str, Any]:
    obj = {**CUSTOMER, "metadata": {"user_id": "u1", **metadata}}
    return stripe_event("customer.created", obj, event_id="evt_shape", created=int(time.time()) - 60)


def period_end(value: int) -> dict[str, Any]:
    event = subscription()
    event["data"]["object"]["current_period_end"] = value
    return event


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_a_body_in_another_unicode_encoding_is_malformed_and_writes_nothing(
    client: Any, redis: Redis, settings: Settings, encoding: str
) -> None:
    """json.loads would read UTF-16/32 bytes, where a lone surrogate's escape hides from the check for it."""
    event = lemon(time.time())
    event["meta"]["custom_data"] = {"user_id": "u\ud800x"}
    response = post(client, "lemonsqueezy", json.dumps(event).encode(encoding))
    assert response.status_code == 400 and code(response) == "malformed_json"
    assert Store.from_settings(redis, settings).ledger()["received"] == 0


def test_a_utf8_body_with_a_byte_order_mark_is_still_read(client: Any) -> None:
    assert post(client, "lemonsqueezy", b"\xef\xbb\xbf" + json.dumps(lemon(time.time())).encode()).status_code == 202


DEEP = "[" * 5000 + "]" * 5000
HOSTILE: dict[str, tuple[str, bytes]] = {
    "nested 5000 deep": (
        "stripe",
        f'{{"id":"evt_d","type":"customer.created","created":1,"data":{{"object":{DEEP}}}}}'.encode(),
    ),
    "nested 500 deep": ("standard", (STANDARD_AT % ("[" * 500 + "]" * 500)).encode()),
    "a bare deep array": ("lemonsqueezy", DEEP.encode()),
    "a lone surrogate user id": ("stripe", json.dumps(customer()).replace('"u1"', '"\\ud800"').encode()),
    "a lone surrogate attribute": ("standard", (STANDARD_AT % '{"plan":"\\udfff"}').encode()),
    "a lone surrogate key": ("standard", (STANDARD_AT % '{"\\ud800":"x"}').encode()),
    "created 1e15": ("stripe", json.dumps({**customer(), "created": 10**15}).encode()),
    "unit_amount 1e30": ("stripe", json.dumps(subscription(amount=10**30)).encode()),
    "unit_amount 1e30 as a float": ("stripe", json.dumps(subscription(amount=None, unit_amount_decimal=1e30)).encode()),
    "NaN": ("stripe", json.dumps(subscription(amount=None, unit_amount_decimal=float("nan"))).encode()),
    "Infinity": ("standard", (STANDARD_AT % '{"seats":Infinity}').encode()),
    "a period end past year 9999": ("stripe", json.dumps(period_end(10**15)).encode()),
    "an int user id of 40 digits": ("stripe", json.dumps(customer(user_id=10**40)).encode()),
    "a 40,000-character string": ("stripe", json.dumps(customer(note="x" * 40_000)).encode()),
    # `$` also matches before a final newline: every pattern must match the whole value.
    "an event id with a trailing newline": ("stripe", json.dumps({**customer(), "id": "evt_shape\n"}).encode()),
    "an email with a trailing newline": ("standard", (STANDARD_AT % '{"email":"a@b.co\\n"}').encode()),
    "a phone with a trailing newline": ("standard", (STANDARD_AT % '{"phone_number":"+48123456789\\n"}').encode()),
    "an attribute name with a trailing newline": ("standard", (STANDARD_AT % '{"plan\\n":"pro"}').encode()),
}


@pytest.mark.parametrize("msg_id", ["msg h1", "m" * 256])
def test_a_webhook_id_that_cannot_be_an_event_id(client: Any, redis: Redis, settings: Settings, msg_id: str) -> None:
    """Standard Webhooks' event id is the sender's webhook-id header: what intake accepts of any source."""
    response = post(client, "standard", (STANDARD_AT % '{"plan":"pro"}').encode(), msg_id=msg_id)
    assert response.status_code == 422 and code(response) == "invalid_payload"
    assert "webhook-id must be 1-255 of A-Z a-z 0-9 _ . : -" in response.get_data(as_text=True)
    assert balanced(redis, settings)["dead_lettered"] == 1


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_bodies_are_refused_and_dead_lettered(client: Any, redis: Redis, settings: Settings, case: str) -> None:
    source, body = HOSTILE[case]
    response = post(client, source, body)
    assert response.status_code == 422, response.get_data(as_text=True)
    assert code(response) == "invalid_payload"
    counts = balanced(redis, settings)
    assert (counts["received"], counts["dead_lettered"]) == (1, 1)
    assert Store.from_settings(redis, settings).dlq().summary()["by_reason"] == {"invalid_payload": 1}
