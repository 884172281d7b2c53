"""Correctly signed webhooks that must still be refused: event times from the future, Lemon
Squeezy replays, and payloads built to break the relay (never a 5xx)."""

from __future__ import annotations

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


@pytest.mark.parametrize("when", ["9999-01-01T00:00:00Z", iso(time.time() + HOUR)])
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
