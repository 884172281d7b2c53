"""POST /webhooks/stripe against a real Redis: every answer, and what it leaves in Redis."""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

import service.intake
from service import create_app
from service.config import Settings
from service.core.dead_letter import DlqFilter
from service.ops.logs import EverySeconds
from service.store import keys
from service.store.ledger import Store
from service.store.ledger_state import decode
from service.web.errors import MAX_BODY_BYTES
from tests.conftest import OLD_SECRET, SECRET, USERCOM_KEY, load_fixture, sign, stripe_event
from tests.ports import unused_port

CUSTOMER = {"id": "cus_1", "email": "ada@example.com", "name": "Ada Lovelace", "metadata": {"user_id": "u1"}}


def event(event_id: str = "evt_1", event_type: str = "customer.created", obj: dict[str, Any] | None = None) -> dict:
    return stripe_event(event_type, copy.deepcopy(obj or CUSTOMER), event_id=event_id)


def ledger(redis: Redis, settings: Settings) -> dict[str, int]:
    return Store.from_settings(redis, settings).ledger()


def error_code(response: Any) -> str:
    assert response.is_json, response.data
    return response.get_json()["error"]["code"]


def test_accepted_event_is_queued_as_an_rq_job(post_event: Any, redis: Redis) -> None:
    response = post_event(event())
    assert response.status_code == 202
    assert response.get_json() == {"status": "accepted", "event_id": "evt_1"}
    queue = Queue(keys.USERCOM.queue_name(keys.LIVE), connection=redis, serializer=JSONSerializer)
    [job_id] = queue.job_ids  # one job for the user, whatever its events
    job = queue.fetch_job(job_id)
    assert job is not None and job.func_name == "workers.delivery.job.deliver"
    assert job.args == [keys.user_ref("stripe", "user:u1")]
    state = decode(redis.hgetall(keys.USERCOM.user_state("stripe", "user:u1")))  # the update, merged in
    assert {name: value for name, (value, _, _) in state.standard.items()} == {
        "email": "ada@example.com",
        "first_name": "Ada",
        "last_name": "Lovelace",
    }
    assert state.tag_list() == ["stripe-customer"] and set(state.events) == {"evt_1"}


def test_dedup_remembers_accepted_ids_longer_than_stripe_retries(
    post_event: Any, redis: Redis, settings: Settings
) -> None:
    assert post_event(event()).status_code == 202
    again = post_event(event())
    assert again.status_code == 200
    assert again.get_json() == {"status": "duplicate", "event_id": "evt_1"}
    assert redis.llen(keys.USERCOM.rq_queue_key(keys.LIVE)) == 1
    [bucket] = redis.keys(keys.dedup_bucket_prefix("stripe") + "*")  # the event id's digest, kept...
    assert redis.ttl(bucket) > 3 * 24 * 3600  # ...longer than Stripe retries
    counts = ledger(redis, settings)
    assert (counts["received"], counts["in_flight"], counts["duplicates"]) == (1, 1, 1)


def test_unmapped_event_types_are_ignored_and_counted(post_event: Any, redis: Redis, settings: Settings) -> None:
    response = post_event(load_fixture("event.charge.succeeded.inngest-cli-capture.json"))
    assert response.status_code == 200
    assert response.get_json()["status"] == "ignored"
    assert redis.llen(keys.USERCOM.rq_queue_key(keys.LIVE)) == 0
    counts = ledger(redis, settings)
    assert (counts["received"], counts["ignored"], counts["in_flight"]) == (1, 1, 0)


def test_an_event_ignored_under_one_mapping_is_accepted_once_a_new_mapping_uses_it(
    env: dict[str, str], redis: Redis, tmp_path: Path
) -> None:
    """The ignored event's id went into the dedup memory: after the mapping gained its type, a backfill (or
    a redelivery) of it was a duplicate, never delivered."""
    narrow = tmp_path / "mapping.toml"
    narrow.write_text('[stripe."invoice.paid"]\nextract = "invoice"\ntags = ["paid"]\n')
    body = json.dumps(event("evt_later_mapped")).encode()

    def post(mapping: dict[str, str]) -> Any:
        app = create_app(Settings.from_env({**env, **mapping}))
        headers = {"Stripe-Signature": sign(body), "Content-Type": "application/json"}
        return app.test_client().post("/webhooks/stripe", data=body, headers=headers).get_json()["status"]

    assert post({"RELAY_MAPPING_FILE": str(narrow)}) == "ignored"
    assert post({"RELAY_MAPPING_FILE": str(narrow)}) == "duplicate"  # still the same event, counted once
    assert post({}) == "accepted"  # the default mapping uses customer.created
    assert post({}) == "duplicate"


def test_old_secret_still_verifies_during_rotation(post_event: Any) -> None:
    assert post_event(event(), secret=OLD_SECRET).status_code == 202


def test_malformed_json_is_400(post_event: Any, redis: Redis) -> None:
    response = post_event(b'{"id": "evt_1", ')
    assert response.status_code == 400
    assert error_code(response) == "malformed_json"
    assert redis.dbsize() == 0


def test_bad_signatures_are_401_with_distinct_codes(
    post_event: Any, redis: Redis, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service.intake, "REFUSALS", EverySeconds(10))  # none of an earlier test's counted
    body = json.dumps(event()).encode()
    with caplog.at_level(logging.WARNING, logger="service.intake"):
        assert error_code(post_event(body, signature=None)) == "signature_missing"
        response = post_event(body, secret="whsec_wrong")
        assert response.status_code == 401 and error_code(response) == "signature_invalid"
        expired = post_event(body, signature=sign(body, timestamp=int(time.time()) - 600))
        assert expired.status_code == 401 and error_code(expired) == "signature_expired"
    assert redis.dbsize() == 0
    # Each refusal is logged (a wrong secret shows in the logs), never with a secret.
    refusals = [r for r in caplog.records if r.name == "service.intake"]
    assert [getattr(r, "outcome", None) for r in refusals] == [
        "signature_missing",
        "signature_invalid",
        "signature_expired",
    ]
    assert all(r.levelno == logging.WARNING and getattr(r, "source", None) == "stripe" for r in refusals)
    assert not any(secret in r.getMessage() for r in refusals for secret in (SECRET, OLD_SECRET, "whsec_wrong"))


def test_refusals_are_logged_once_a_while_with_how_many_came_since(
    post_event: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A public endpoint: a flood of bad signatures must not flood the logs."""
    now = [0.0]
    monkeypatch.setattr(service.intake, "REFUSALS", EverySeconds(10, clock=lambda: now[0]))
    body = json.dumps(event()).encode()
    with caplog.at_level(logging.WARNING, logger="service.intake"):
        for _ in range(3):
            assert post_event(body, secret="whsec_wrong").status_code == 401
        assert error_code(post_event(body, signature=None)) == "signature_missing"  # another kind: its own line
        now[0] = 10.0
        assert post_event(body, secret="whsec_wrong").status_code == 401
    lines = [r.getMessage() for r in caplog.records if r.name == "service.intake"]
    assert len(lines) == 3, lines
    assert lines[0].endswith("(signature_invalid)") and lines[1].endswith("(signature_missing)")
    assert lines[2].endswith("(signature_invalid); 2 more like it since the last such line")


def test_oversized_body_is_413(post_event: Any, redis: Redis) -> None:
    big = event()
    big["data"]["object"]["description"] = "x" * MAX_BODY_BYTES
    response = post_event(big)
    assert response.status_code == 413
    assert error_code(response) == "payload_too_large"
    assert redis.dbsize() == 0


def test_a_body_shorter_than_its_content_length_is_400_incomplete_body(client: Any, redis: Redis) -> None:
    """The sender stopped (or its body did not all arrive in time): a clear code, nothing written."""
    body = json.dumps(event()).encode()
    response = client.post(
        "/webhooks/stripe",
        data=body,
        headers={"Stripe-Signature": sign(body), "Content-Type": "application/json"},
        environ_overrides={"CONTENT_LENGTH": str(len(body) + 10)},
    )
    assert response.status_code == 400
    assert error_code(response) == "incomplete_body"
    assert redis.dbsize() == 0


def test_non_json_content_type_is_415(post_event: Any, redis: Redis) -> None:
    response = post_event(event(), content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert error_code(response) == "unsupported_media_type"
    assert redis.dbsize() == 0


def test_invalid_payload_is_422_with_field_messages_and_dead_lettered(
    post_event: Any, redis: Redis, settings: Settings
) -> None:
    broken = event(
        "evt_bad", "customer.subscription.updated", {"id": "sub_1", "status": "active", "metadata": {"user_id": "u42"}}
    )
    response = post_event(broken)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "invalid_payload"
    assert error["details"]["data"]["object"]["customer"] == ["Missing data for required field."]
    assert error["details"]["data"]["object"]["items"] == ["Missing data for required field."]
    assert redis.llen(keys.USERCOM.rq_queue_key(keys.LIVE)) == 0
    [item] = Store.from_settings(redis, settings).dead_letters()
    assert item["reason"] == "invalid_payload"
    assert item["event_id"] == "evt_bad" and item["event_type"] == "customer.subscription.updated"
    assert item["event"] == broken
    # Filed under the user its metadata names, as far as it can be read: an operator finds it by user.
    assert item["user_id"] == "u42"
    [found] = Store.from_settings(redis, settings).dlq().matching(DlqFilter(user_id="u42"))[0]
    assert found["id"] == item["id"]
    # Stripe retries the same invalid event: still 422, kept once, counted once.
    assert post_event(broken).status_code == 422
    counts = ledger(redis, settings)
    assert (counts["received"], counts["dead_lettered"], counts["in_flight"]) == (1, 1, 0)
    assert redis.hlen(keys.USERCOM.dlq[0]) == 1


def test_non_object_json_is_422(post_event: Any) -> None:
    response = post_event(b"[1, 2, 3]")
    assert response.status_code == 422
    assert error_code(response) == "invalid_payload"


def test_redis_down_is_503_quickly_and_never_2xx(settings: Settings) -> None:
    dead = Settings.from_env(
        {"REDIS_URL": f"redis://127.0.0.1:{unused_port()}/0", "STRIPE_WEBHOOK_SECRETS": SECRET}, role="web"
    )
    client = create_app(dead).test_client()
    body = json.dumps(event()).encode()
    started = time.monotonic()
    response = client.post(
        "/webhooks/stripe", data=body, content_type="application/json", headers={"Stripe-Signature": sign(body)}
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert error_code(response) == "redis_unavailable"
    assert elapsed < 3, "a dead Redis must not hold the request (generous bound: hang guard)"
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200


def test_redis_out_of_memory_is_503_saying_so_and_nothing_is_written(
    post_event: Any, redis: Redis, settings: Settings
) -> None:
    before = redis.config_get("maxmemory*")
    redis.config_set("maxmemory-policy", "noeviction")
    redis.config_set("maxmemory", 1)  # every write refused, as when Redis is full
    try:
        response = post_event(json.dumps(event()).encode())
    finally:
        redis.config_set("maxmemory", before["maxmemory"])
        redis.config_set("maxmemory-policy", before["maxmemory-policy"])
    assert response.status_code == 503 and error_code(response) == "redis_unavailable"
    assert response.get_json()["error"]["message"] == "redis refused the request (OOM); retry later"
    assert ledger(redis, settings)["received"] == 0


def test_health_and_readiness(client: Any) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").get_json() == {"status": "ready"}


def test_unknown_routes_and_methods_answer_json(client: Any) -> None:
    missing = client.get("/nope")
    assert missing.status_code == 404 and error_code(missing) == "not_found"
    wrong = client.get("/webhooks/stripe")
    assert wrong.status_code == 405 and error_code(wrong) == "method_not_allowed"
    assert set(wrong.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}  # a 405 says what is allowed
    assert wrong.content_type == "application/json"
    options = client.options("/webhooks/stripe")
    assert (options.status_code, options.data, options.content_type) == (204, b"", None)
    assert set(options.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/webhooks//stripe"), ("GET", "/admin//dlq"), ("GET", "/status//")]
)
def test_a_doubled_slash_is_a_json_404_not_a_redirect_to_the_host_header(client: Any, method: str, path: str) -> None:
    """Werkzeug merged "//" with a 308 in HTML whose Location came from the request's Host header."""
    response = client.open(path, method=method, headers={"Host": "evil.example"}, data=b"{}")
    assert response.status_code == 404 and error_code(response) == "not_found"
    assert "Location" not in response.headers and response.content_type == "application/json"


def test_no_response_or_stored_item_contains_a_secret(post_event: Any, redis: Redis) -> None:
    responses = [
        post_event(event("evt_ok")),
        post_event(event("evt_bad", "customer.subscription.updated", {"id": "s"})),
        post_event(b"{", secret=OLD_SECRET),
        post_event(event(), secret="whsec_wrong"),
    ]
    stored = b"".join(v for k in redis.keys("*") if redis.type(k) == b"hash" for v in redis.hvals(k))
    for secret in (SECRET, OLD_SECRET, USERCOM_KEY):
        for response in responses:
            assert secret.encode() not in response.data
        assert secret.encode() not in stored
