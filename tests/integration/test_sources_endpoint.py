"""POST /webhooks/standard, /webhooks/paddle and /webhooks/lemonsqueezy against a real Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis import Redis

from service import create_app
from service.config import Settings
from service.store import keys
from service.store.ledger import Store
from tests.conftest import (
    LEMONSQUEEZY_SECRET,
    OLD_STANDARD_SECRET,
    PADDLE_SECRET,
    STANDARD_SECRET,
    lemonsqueezy_headers,
    load_fixture,
    paddle_headers,
    standard_event,
    standard_headers,
)

Signer = Callable[[bytes], dict[str, str]]
PADDLE = load_fixture("pay.subscription.created.json", "paddle_billing")
LEMON = load_fixture("pay.subscription_created.json", "lemon_squeezy")
# Lemon Squeezy events older than the dedup memory are refused as replays (test_hardening.py)
LEMON_UPDATED_MS = (int(time.time()) - 3600) * 1000
LEMON["data"]["attributes"]["updated_at"] = datetime.fromtimestamp(LEMON_UPDATED_MS / 1000, UTC).isoformat()
STANDARD = standard_event(attributes={"email": "ada@example.com", "plan": "pro"}, tags=["beta"])
# source, a valid payload, how its sender signs, the event id the relay should use
CASES: list[tuple[str, dict[str, Any], Signer, str]] = [
    ("standard", STANDARD, lambda body: standard_headers(body, "msg_42"), "msg_42"),
    ("paddle", PADDLE, paddle_headers, PADDLE["event_id"]),
    ("lemonsqueezy", LEMON, lemonsqueezy_headers, f"subscription_created-subscriptions-1-{LEMON_UPDATED_MS}"),
]
IDS = [case[0] for case in CASES]


def post(client: Any, source: str, payload: dict[str, Any] | bytes, signer: Signer | None) -> Any:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = signer(body) if signer else {}
    return client.post(f"/webhooks/{source}", data=body, headers=headers, content_type="application/json")


@pytest.mark.parametrize(("source", "payload", "signer", "event_id"), CASES, ids=IDS)
def test_signed_event_is_accepted_once(
    client: Any, redis: Redis, settings: Settings, source: str, payload: dict[str, Any], signer: Signer, event_id: str
) -> None:
    accepted = {"event_type": _type(payload), "outcome": "accepted", "source": source}
    before = REGISTRY.get_sample_value("relay_webhooks_total", accepted) or 0.0  # other tests post too
    response = post(client, source, payload, signer)
    assert response.status_code == 202, response.get_json()
    assert response.get_json() == {"status": "accepted", "event_id": event_id}
    assert redis.llen(keys.USERCOM.rq_queue_key(keys.LIVE)) == 1
    again = post(client, source, payload, signer)  # the provider retries: deduplicated by its event id
    assert again.status_code == 200 and again.get_json()["status"] == "duplicate"
    ledger = Store.from_settings(redis, settings).ledger()
    assert (ledger["received"], ledger["duplicates"], ledger["in_flight"]) == (1, 1, 1)
    assert client.get("/metrics").status_code == 200
    assert REGISTRY.get_sample_value("relay_webhooks_total", accepted) == before + 1


def _type(payload: dict[str, Any]) -> str:
    return payload.get("type") or payload.get("event_type") or payload["meta"]["event_name"]


@pytest.mark.parametrize(("source", "payload", "signer", "event_id"), CASES, ids=IDS)
def test_unsigned_or_wrongly_signed_is_401_and_nothing_written(
    client: Any, redis: Redis, source: str, payload: dict[str, Any], signer: Signer, event_id: str
) -> None:
    missing = post(client, source, payload, None)
    assert missing.status_code == 401 and missing.get_json()["error"]["code"] == "signature_missing"
    body = json.dumps(payload).encode()
    tampered = client.post(
        f"/webhooks/{source}", data=body + b" ", headers=signer(body), content_type="application/json"
    )
    assert tampered.status_code == 401 and tampered.get_json()["error"]["code"] == "signature_invalid"
    assert redis.dbsize() == 0


def test_standard_webhooks_rotation_accepts_the_old_secret(client: Any) -> None:
    headers: Signer = lambda body: standard_headers(body, "msg_old", secret=OLD_STANDARD_SECRET)  # noqa: E731
    assert post(client, "standard", STANDARD, headers).status_code == 202


def test_paddle_older_than_five_seconds_is_expired(client: Any) -> None:
    import time

    stale: Signer = lambda body: paddle_headers(body, timestamp=int(time.time()) - 30)  # noqa: E731
    response = post(client, "paddle", PADDLE, stale)
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "signature_expired"


@pytest.mark.parametrize(
    ("source", "payload", "signer", "field"),
    [
        ("standard", standard_event(attributes={"email": "nope"}), lambda b: standard_headers(b, "msg_bad"), "data"),
        ("paddle", {**PADDLE, "data": {"id": "sub_1"}}, paddle_headers, "data"),
        ("lemonsqueezy", {"meta": {"event_name": "subscription_created"}}, lemonsqueezy_headers, "data"),
    ],
    ids=IDS,
)
def test_invalid_payload_is_422_and_dead_lettered_under_its_source(
    client: Any, redis: Redis, settings: Settings, source: str, payload: dict[str, Any], signer: Signer, field: str
) -> None:
    response = post(client, source, payload, signer)
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "invalid_payload" and field in error["details"]
    [item] = Store.from_settings(redis, settings).dead_letters()
    assert item["source"] == source and item["reason"] == "invalid_payload" and item["event"] == payload
    assert redis.llen(keys.USERCOM.rq_queue_key(keys.LIVE)) == 0


def test_a_custom_attribute_named_as_a_field_of_the_user_record_is_422(client: Any) -> None:
    """`name`, `created_at`, `page_views`... at the body's top level would set (or be refused as) fields of
    User.com's user record, not create custom attributes."""
    payload = standard_event(attributes={"page_views": 3, "plan": "pro"})
    response = post(client, "standard", payload, lambda b: standard_headers(b, "msg_record"))
    assert response.status_code == 422, response.get_json()
    details = response.get_json()["error"]["details"]
    assert "page_views" in json.dumps(details) and "plan" not in json.dumps(details)


def test_unmapped_types_are_ignored(client: Any, redis: Redis) -> None:
    other = {**STANDARD, "type": "user.deleted"}
    response = post(client, "standard", other, lambda body: standard_headers(body, "msg_other"))
    assert response.status_code == 200 and response.get_json()["status"] == "ignored"
    assert redis.llen(keys.USERCOM.rq_queue_key(keys.LIVE)) == 0


def test_a_source_without_a_secret_is_404_naming_its_setting(env: dict[str, str], redis: Redis) -> None:
    stripe_only = {k: v for k, v in env.items() if not k.startswith(("STANDARD_", "PADDLE_", "LEMONSQUEEZY_"))}
    client = create_app(Settings.from_env(stripe_only)).test_client()
    for source, setting in [("standard", "STANDARD_WEBHOOK_SECRETS"), ("paddle", "PADDLE_WEBHOOK_SECRETS")]:
        response = post(client, source, STANDARD, None)
        assert response.status_code == 404
        error = response.get_json()["error"]
        assert error["code"] == "source_not_configured" and setting in error["message"]
    assert post(client, "chargebee", STANDARD, None).get_json()["error"]["code"] == "not_found"
    assert redis.dbsize() == 0


def test_no_answer_or_stored_item_carries_a_source_secret(client: Any, redis: Redis) -> None:
    answers = [post(client, source, payload, signer).data for source, payload, signer, _ in CASES]
    answers.append(post(client, "paddle", {"bad": 1}, paddle_headers).data)
    stored = b"".join(v for k in redis.keys("*") if redis.type(k) == b"hash" for v in redis.hvals(k))
    for secret in (STANDARD_SECRET, OLD_STANDARD_SECRET, PADDLE_SECRET, LEMONSQUEEZY_SECRET):
        assert all(secret.encode() not in answer for answer in answers)
        assert secret.encode() not in stored
