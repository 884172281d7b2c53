"""Times in /status, the admin API and the CLI are ISO 8601 in UTC (`Z`); numbers a dashboard
computes with stay as `<name>_unix`. Redis keeps epoch seconds."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from service import create_app
from service.cli import main
from service.config import Settings
from service.core.dead_letter import DeadLetter
from service.core.times import iso, iso_seconds, shown
from service.store import keys
from service.store.ledger import Store
from service.store.trace import TraceEntry
from service.web.schemas import DlqItem, Status, UserTrace
from tests.conftest import an_update, sign, stripe_event

RELAY = str(Path(sys.executable).with_name("relay"))
TOKEN = "times-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FIRST, LAST, EVENT = 1_764_446_400.5, 1_764_447_000.123, 1_764_440_000  # 2025-11-29T20:00:00.500Z, ...


def parsed(text: str) -> float:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text).astimezone(UTC).timestamp()


def test_iso_is_utc_with_a_z_and_milliseconds() -> None:
    assert iso(0.25) == "1970-01-01T00:00:00.250Z"
    assert iso(LAST) == "2025-11-29T20:10:00.123Z"
    assert iso(None) is None and iso_seconds(None) == "-"
    assert iso_seconds(LAST) == "2025-11-29T20:10:00Z"
    assert shown({"at": 5, "x": 1}, ("at", "missing")) == {"at": "1970-01-01T00:00:05.000Z", "at_unix": 5, "x": 1}
    assert shown({"at": None}, ("at",)) == {"at": None, "at_unix": None}
    # Past what a date can show (a provider's `created` in milliseconds): no date, the number kept.
    assert shown({"at": 10**12}, ("at",)) == {"at": None, "at_unix": 10**12}
    assert iso(float("nan")) is None and iso_seconds(10**12) == str(10**12)


@pytest.fixture
def app_settings(env: dict[str, str], redis: Redis) -> Settings:
    return Settings.from_env({**env, "RELAY_ADMIN_TOKEN": TOKEN})


def test_status_times_are_iso_with_unix_numbers(app_settings: Settings, redis: Redis) -> None:
    client = create_app(app_settings).test_client()
    empty = client.get("/status").get_json()
    assert empty["destinations"]["usercom"]["last_delivery_at"] is None
    assert empty["destinations"]["usercom"]["last_delivery_at_unix"] is None
    now = time.time()
    redis.set(keys.USERCOM.last_delivery, repr(LAST))
    redis.set(keys.USERCOM.last_429, repr(FIRST))
    redis.set(keys.USERCOM.limiter_paused_until, int((now + 600) * 1000))
    document = client.get("/status").get_json()
    assert Status().validate(document) == {}  # the OpenAPI schema says what /status sends
    assert document["time_unix"] >= now and parsed(document["time"]) == pytest.approx(document["time_unix"], abs=1e-3)
    status = document["destinations"]["usercom"]
    assert (status["last_delivery_at"], status["last_delivery_at_unix"]) == ("2025-11-29T20:10:00.123Z", LAST)
    limiter = status["limiter"]
    assert (limiter["last_429_at"], limiter["last_429_at_unix"]) == ("2025-11-29T20:00:00.500Z", FIRST)
    assert parsed(limiter["paused_until"]) == pytest.approx(limiter["paused_until_unix"], abs=1e-3)
    assert limiter["paused_until_unix"] == pytest.approx(now + 600, abs=1)
    # The metrics compute with the numbers.
    metrics = client.get("/metrics").get_data(as_text=True)
    # Parsed as Prometheus does: a label value from an earlier test may hold characters that
    # str.splitlines() or str.split() would break a line at.
    families = text_string_to_metric_families(metrics)
    value = {s.name: s.value for family in families for s in family.samples if s.labels}
    assert value["relay_last_delivery_timestamp_seconds"] == LAST
    assert 500 < value["relay_ratelimit_pause_seconds"] <= 600


@pytest.fixture
def store(app_settings: Settings, redis: Redis) -> Store:
    store = Store.from_settings(redis, app_settings)
    update = an_update("evt_t", user_id="u_t", event_time=EVENT)
    assert store.accept(update)
    redis.delete(keys.USERCOM.rq_queue_key(keys.LIVE))
    item = DeadLetter(
        id="stripe-evt_t",
        reason="retries_exhausted",
        source="stripe",
        event_type="invoice.paid",
        event_id="evt_t",
        event_time=EVENT,
        message="gave up",
        update=update.to_dict(),
        user_id="u_t",
        attempts=3,
        first_failure_at=FIRST,
        last_failure_at=LAST,
        last_status=503,
    )
    store.dead_letter(item)
    return store


def relay(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": settings.redis_url}
    return subprocess.run([RELAY, *args], env=env, capture_output=True, text=True, timeout=60)


def assert_item_times(item: dict[str, Any]) -> None:
    assert DlqItem().validate(item) == {}
    assert (item["first_failure_at"], item["first_failure_at_unix"]) == ("2025-11-29T20:00:00.500Z", FIRST)
    assert (item["last_failure_at"], item["last_failure_at_unix"]) == ("2025-11-29T20:10:00.123Z", LAST)
    assert (item["event_time"], item["event_time_unix"]) == (iso(EVENT), EVENT)


def test_dead_letter_times_in_the_api_and_the_cli(app_settings: Settings, store: Store) -> None:
    client = create_app(app_settings).test_client()
    listed = client.get("/admin/dlq", headers=AUTH).get_json()["items"]
    assert len(listed) == 1
    assert_item_times(listed[0])
    assert_item_times(client.get("/admin/dlq/stripe-evt_t", headers=AUTH).get_json())
    assert_item_times(json.loads(relay(app_settings, "dlq", "show", "stripe-evt_t").stdout))
    assert_item_times(json.loads(relay(app_settings, "dlq", "list", "--json").stdout)["items"][0])
    assert "2025-11-29T20:10:00Z" in relay(app_settings, "dlq", "list").stdout
    # Redis keeps the numbers (what the stored form always was).
    kept = store.dead_letters()[0]
    assert (kept["first_failure_at"], kept["last_failure_at"], kept["event_time"]) == (FIRST, LAST, EVENT)


def test_a_dead_letter_dated_past_year_9999_is_listed_and_shown(
    app_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused for its time (a Stripe `created` in milliseconds) and kept: every listing still works."""
    client = create_app(app_settings).test_client()
    event = stripe_event("customer.updated", {"id": "cus_1", "metadata": {"user_id": "u1"}}, event_id="evt_ms")
    body = json.dumps({**event, "created": 10**12}).encode()
    headers = {"Stripe-Signature": sign(body)}
    assert (
        client.post("/webhooks/stripe", data=body, headers=headers, content_type="application/json").status_code == 422
    )
    listed = client.get("/admin/dlq", headers=AUTH)
    assert listed.status_code == 200
    [item] = listed.get_json()["items"]
    assert (item["event_time"], item["event_time_unix"]) == (None, 10**12) and DlqItem().validate(item) == {}
    assert client.get("/admin/dlq/stripe-evt_ms", headers=AUTH).status_code == 200
    monkeypatch.setenv("REDIS_URL", app_settings.redis_url)
    for args in (["list"], ["list", "--json"], ["show", "stripe-evt_ms"]):
        assert main(["dlq", *args]) == 0, args
        assert capsys.readouterr().err == ""


def test_trace_times_in_the_api_and_the_cli(app_settings: Settings, redis: Redis) -> None:
    entry = TraceEntry(kind="delivery", user_id="u_t", destination="usercom", at=LAST, endpoint="PUT /users/1/")
    redis.lpush(keys.USERCOM.trace("u_t"), entry.to_json())
    client = create_app(app_settings).test_client()
    body = client.get("/admin/users/u_t/trace", headers=AUTH).get_json()
    assert UserTrace().validate(body) == {}
    assert (body["entries"][0]["at"], body["entries"][0]["at_unix"]) == ("2025-11-29T20:10:00.123Z", LAST)
    cli = json.loads(relay(app_settings, "trace", "u_t", "--json").stdout)
    assert cli["entries"] == body["entries"]
    assert relay(app_settings, "trace", "u_t").stdout.splitlines()[1].startswith("2025-11-29T20:10:00Z")
