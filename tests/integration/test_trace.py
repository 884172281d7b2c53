"""Per-user trace: deliveries through the real User.com sandbox and dead letters, read back
through the admin API and `relay trace`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from service import create_app
from service.config import Settings
from service.core.update import UserUpdate
from service.store import keys
from workers.delivery.context import DeliveryContext, configure
from workers.runner import build_context

RELAY = str(Path(sys.executable).with_name("relay"))
TOKEN = "trace-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def update(event_id: str, user_id: str = "u1", **fields: Any) -> UserUpdate:
    values: dict[str, Any] = {"standard": {"email": "ada@example.com"}, "custom": {"plan": "pro"}, "tags": ["vip"]}
    values.update(fields)
    return UserUpdate(
        source="stripe",
        event_id=event_id,
        event_type="customer.subscription.updated",
        event_time=1_700_000_000,
        user_id=user_id,
        customer_id=None,
        **values,
    )


def context(env: dict[str, str], **extra: str) -> Iterator[DeliveryContext]:
    settings = Settings.from_env({**env, "RELAY_ADMIN_TOKEN": TOKEN, **extra})
    ctx = build_context(settings, "usercom")
    configure(ctx)
    yield ctx
    ctx.redis.close()


@pytest.fixture
def ctx(env: dict[str, str], redis: Redis) -> Iterator[DeliveryContext]:
    yield from context(env, RELAY_TRACE_PER_USER="3")


def work(ctx: DeliveryContext, *updates: UserUpdate) -> None:
    for item in updates:
        assert ctx.store.accept(item)
    SimpleWorker([ctx.queues[keys.LIVE]], connection=ctx.redis, serializer=JSONSerializer).work(burst=True)


def relay(ctx: DeliveryContext, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": ctx.settings.redis_url}
    return subprocess.run([RELAY, *args], env=env, capture_output=True, text=True, timeout=30)


def api_trace(ctx: DeliveryContext, user_id: str) -> dict[str, Any]:
    client = create_app(ctx.settings).test_client()
    answer = client.get(f"/admin/users/{user_id}/trace?destination=usercom", headers=AUTH)
    assert answer.status_code == 200, answer.get_json()
    body: dict[str, Any] = answer.get_json()
    return body


def test_a_delivery_and_a_dead_letter_are_traced(ctx: DeliveryContext) -> None:
    work(ctx, update("evt_1"), update("evt_2", custom={"plan": "team"}))
    work(ctx, update("evt_bad", standard={"company_id": "co_missing"}))  # User.com refuses: 400
    body = api_trace(ctx, "u1")
    assert body["destination"] == "usercom"
    dead, *deliveries = body["entries"]  # newest first
    assert dead["kind"] == "dead_letter"
    assert (dead["reason"], dead["dead_letter_id"], dead["event_ids"]) == (
        "usercom_rejected",
        "stripe-evt_bad",
        ["evt_bad"],
    )
    assert dead["status"] == 400  # User.com's answer, as the dead letter's last_status
    first = deliveries[-1]
    assert first["kind"] == "delivery" and first["status"] == 200
    assert first["endpoint"].startswith(("PUT /users/", "PUT /users-by-id/"))
    assert first["attributes"]["email"] == "ada@example.com" and first["tags"] == ["vip"]
    assert first["dropped"] == []
    merged = sorted(e for entry in deliveries for e in entry["event_ids"])
    assert merged == ["evt_1", "evt_2"]
    # The CLI reads the same entries.
    shown = relay(ctx, "trace", "u1", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["entries"] == body["entries"]
    table = relay(ctx, "trace", "u1")
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["TIME", "WHAT"]
    assert "dead letter" in lines[1] and "usercom_rejected (stripe-evt_bad)" in lines[1]
    at = lines[0].index("STATUS")  # columns are aligned: the status under its header
    assert lines[1][at:].split()[0] == "400"
    assert "delivered" in lines[-1] and 'email="ada@example.com"' in lines[-1] and "+tag:vip" in lines[-1]


def test_the_trace_keeps_the_newest_entries_and_stays_small(ctx: DeliveryContext) -> None:
    for n in range(5):
        work(
            ctx,
            update(
                f"evt_{n}", custom={"plan": f"p{n}", "notes": "y" * 5000, **{f"a{i}": "z" * 100 for i in range(40)}}
            ),
        )
    entries = api_trace(ctx, "u1")["entries"]
    assert len(entries) == 3  # RELAY_TRACE_PER_USER
    assert [e["event_ids"] for e in entries] == [["evt_4"], ["evt_3"], ["evt_2"]]
    raw = ctx.redis.lrange(keys.USERCOM.trace("u1"), 0, -1)
    assert all(len(item) <= 2100 for item in raw)
    assert entries[0]["attributes_left_out"] > 0
    assert 0 < ctx.redis.ttl(keys.USERCOM.trace("u1")) <= 7 * 24 * 3600


def test_an_unknown_user_has_an_empty_trace(ctx: DeliveryContext) -> None:
    assert api_trace(ctx, "nobody")["entries"] == []
    assert "no trace for user 'nobody'" in relay(ctx, "trace", "nobody").stdout


def test_the_trace_is_guarded_like_the_admin_api(ctx: DeliveryContext) -> None:
    client = create_app(ctx.settings).test_client()
    assert client.get("/admin/users/u1/trace").status_code == 401
    assert client.get("/admin/users/u1/trace?destination=nope", headers=AUTH).status_code == 400
    assert client.get("/admin/users/u1/trace?destination=userkit", headers=AUTH).status_code == 400
    empty = client.get("/admin/users/u1/trace?destination=", headers=AUTH)  # as GET /admin/dlq?destination= is
    assert empty.status_code == 400 and empty.get_json()["error"]["code"] == "invalid_request"
    refused = relay(ctx, "trace", "u1", "--destination", "userkit")  # usercom alone is configured
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr == "relay trace: --destination userkit is not in RELAY_DESTINATIONS (usercom)\n"


def test_zero_turns_the_trace_off(env: dict[str, str], redis: Redis) -> None:
    ctx = next(context(env, RELAY_TRACE_PER_USER="0"))
    work(ctx, update("evt_1"), update("evt_bad", user_id="u2", standard={"company_id": "co_missing"}))
    assert ctx.store.ledger()["delivered"] == 1 and ctx.store.ledger()["dead_lettered"] == 1
    assert api_trace(ctx, "u1")["entries"] == [] and api_trace(ctx, "u2")["entries"] == []
    assert redis.keys("relay:trace:*") == []
