"""Admin API and /status over HTTP, against a real Redis, real rq workers and the sandbox."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3
from marshmallow import ValidationError
from redis import Redis
from rq import SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer

from service import create_app
from service.config import Settings
from service.core.update import UserUpdate
from service.devtools.usercom_sandbox import Fault, SandboxServer
from service.devtools.wsgi_server import BackgroundServer
from service.intake import invalid_item
from service.sources.base import Described
from service.store import keys
from service.store.jobs import DELIVER_FUNC, job_id_for
from service.store.ledger_state import decode
from service.store.limiter_scripts import INCREASE_FRACTION_PER_SECOND
from tests.conftest import SECRET, USERCOM_KEY, close_connections, sign, stripe_event
from tests.unit.test_billing_truth import paddle_adjustment
from workers.delivery.context import DeliveryContext, configure
from workers.delivery.job import deliver_update, on_job_failure
from workers.runner import build_context

TOKEN = "admin-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def b64(text: str) -> bytes:
    """A cursor's encoding (base64url, unpadded) of any text: a cursor forged."""
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=")


@pytest.fixture
def admin_settings(env: dict[str, str]) -> Settings:
    return Settings.from_env({**env, "RELAY_ADMIN_TOKEN": TOKEN, "RELAY_DLQ_MAX_ITEMS": "4"})


@pytest.fixture
def admin(admin_settings: Settings, redis: Redis) -> Any:
    return create_app(admin_settings).test_client()


@pytest.fixture
def ctx(admin_settings: Settings, redis: Redis) -> DeliveryContext:
    context = build_context(admin_settings, "usercom")
    configure(context)
    return context


@pytest.fixture
def served(admin_settings: Settings, redis: Redis) -> Iterator[str]:
    """The app on a real socket: the path reaches it as a WSGI server decodes it (%2F is "/")."""
    server = BackgroundServer(create_app(admin_settings)).start()
    yield server.base_url
    server.stop()


@pytest.fixture
def http() -> Iterator[urllib3.PoolManager]:
    pool = urllib3.PoolManager(retries=False, timeout=10)
    yield pool
    close_connections(pool)


def update(event_id: str, *, user: str = "u1", event_time: int = 100, **custom: Any) -> UserUpdate:
    return UserUpdate(
        source="stripe",
        event_id=event_id,
        event_type="customer.subscription.updated",
        event_time=event_time,
        user_id=user,
        customer_id=None,
        custom=custom or {"plan": "pro"},
        tags=["subscriber"],
    )


def dead_letter(ctx: DeliveryContext, sandbox: SandboxServer, item: UserUpdate, status: int = 400) -> None:
    """Accept the update, then have User.com refuse it (400) or fail until retries give up (5xx)."""
    assert ctx.store.accept(item)
    assert ctx.redis.lpop(keys.USERCOM.rq_queue_key(keys.LIVE))  # this test runs the job's work itself, below
    sandbox.state.faults.append(Fault(status))
    first = None if status < 500 else time.time() - ctx.settings.retry_give_up_seconds
    assert deliver_update(ctx, item, attempt=9, first_failure_at=first) == "dead_lettered"


def work(ctx: DeliveryContext, lane: str) -> None:
    SimpleWorker([ctx.queues[lane]], connection=ctx.redis, serializer=JSONSerializer).work(burst=True)


def test_admin_api_is_disabled_without_a_token(client: Any) -> None:
    response = client.get("/admin/dlq", headers=AUTH)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "admin_disabled"


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Token {TOKEN}", TOKEN, "Bearer "])
def test_admin_api_needs_the_bearer_token(admin: Any, header: str | None) -> None:
    response = admin.get("/admin/dlq", headers={"Authorization": header} if header else {})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"
    assert TOKEN not in response.get_data(as_text=True)


def test_list_filters_and_pages(admin: Any, ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    dead_letter(ctx, sandbox, update("evt_a", user="u1"))
    dead_letter(ctx, sandbox, update("evt_b", user="u2"), status=500)
    dead_letter(ctx, sandbox, update("evt_c", user="u2"))
    everything = admin.get("/admin/dlq", headers=AUTH).get_json()
    assert everything["total"] == 3
    assert [i["event_id"] for i in everything["items"]] == ["evt_a", "evt_b", "evt_c"]  # oldest first
    rejected = admin.get("/admin/dlq?reason=usercom_rejected", headers=AUTH).get_json()
    assert [i["event_id"] for i in rejected["items"]] == ["evt_a", "evt_c"]
    u2 = admin.get("/admin/dlq?user_id=u2&limit=1&offset=1", headers=AUTH).get_json()
    assert (u2["total"], [i["event_id"] for i in u2["items"]]) == (2, ["evt_c"])
    assert admin.get("/admin/dlq?since=2999-01-01T00:00:00Z", headers=AUTH).get_json()["total"] == 0
    assert admin.get("/admin/dlq?event_type=invoice.paid", headers=AUTH).get_json()["total"] == 0
    item = everything["items"][1]
    assert (item["reason"], item["last_status"], item["attempts"]) == ("retries_exhausted", 500, 9)
    assert item["update"]["custom"] == {"plan": "pro"} and USERCOM_KEY not in str(everything)


# An offset past 2^63 reached Redis, which refused it: a 503 redis_unavailable for a caller's typo.
@pytest.mark.parametrize(
    "query",
    ["reason=nope", "limit=0", "limit=501", "since=yesterday", "colour=blue", "offset=9223372036854775808"],
)
def test_bad_list_parameters_are_400(admin: Any, query: str) -> None:
    response = admin.get(f"/admin/dlq?{query}", headers=AUTH)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_request"


def test_show_and_delete(admin: Any, ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    dead_letter(ctx, sandbox, update("evt_a"))
    shown = admin.get("/admin/dlq/stripe-evt_a", headers=AUTH)
    assert shown.status_code == 200 and shown.get_json()["event_id"] == "evt_a"
    assert admin.delete("/admin/dlq/stripe-evt_a", headers=AUTH).status_code == 204
    assert admin.get("/admin/dlq/stripe-evt_a", headers=AUTH).status_code == 404
    assert admin.delete("/admin/dlq/stripe-evt_a", headers=AUTH).status_code == 404
    ledger = ctx.store.ledger()
    assert (ledger["dead_lettered"], ledger["in_flight"]) == (1, 0)  # deleting forgets the item, not the outcome


def test_replay_delivers_on_the_replay_lane(admin: Any, ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    dead_letter(ctx, sandbox, update("evt_a"), status=503)
    response = admin.post("/admin/dlq/stripe-evt_a/replay", headers=AUTH)
    assert response.status_code == 202 and response.get_json()["status"] == "replayed"
    assert ctx.redis.llen(keys.USERCOM.rq_queue_key(keys.LIVE)) == 0
    assert ctx.redis.llen(keys.USERCOM.rq_queue_key(keys.REPLAY)) == 1
    assert ctx.store.ledger()["in_flight"] == 1
    work(ctx, keys.REPLAY)
    assert sandbox.state.user_by_custom_id("u1")["attributes"] == {"plan": "pro"}
    ledger = ctx.store.ledger()
    assert (ledger["delivered"], ledger["dead_lettered"], ledger["replayed"], ledger["in_flight"]) == (1, 0, 1, 0)
    assert admin.post("/admin/dlq/stripe-evt_a/replay", headers=AUTH).status_code == 404


def test_stale_replay_never_overwrites_newer_values(admin: Any, ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    dead_letter(ctx, sandbox, update("evt_old", event_time=100, plan="starter"), status=503)
    newer = update("evt_new", event_time=200, plan="enterprise")
    assert ctx.store.accept(newer)
    work(ctx, keys.LIVE)
    assert admin.post("/admin/dlq/stripe-evt_old/replay", headers=AUTH).status_code == 202
    work(ctx, keys.REPLAY)
    user = sandbox.state.user_by_custom_id("u1")
    assert user["attributes"] == {"plan": "enterprise"}
    assert ctx.store.ledger()["in_flight"] == 0


def test_bulk_replay_dry_run_counts_first(admin: Any, ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    for event_id in ("evt_a", "evt_b"):
        dead_letter(ctx, sandbox, update(event_id), status=500)
    dead_letter(ctx, sandbox, update("evt_c"))
    dry = admin.post("/admin/dlq/replay", json={"reason": "retries_exhausted", "dry_run": True}, headers=AUTH)
    assert dry.status_code == 200
    assert dry.get_json() == {"matched": 2, "selected": 2, "dry_run": True, "outcomes": {}}
    assert ctx.redis.llen(keys.USERCOM.rq_queue_key(keys.REPLAY)) == 0
    real = admin.post("/admin/dlq/replay", json={"reason": "retries_exhausted"}, headers=AUTH)
    assert real.status_code == 202 and real.get_json()["outcomes"] == {"replayed": 2}
    # Both items are u1's: merged into the user's state, delivered by one job.
    assert ctx.redis.llen(keys.USERCOM.rq_queue_key(keys.REPLAY)) == 1
    assert set(decode(ctx.redis.hgetall(keys.USERCOM.user_state("stripe", "user:u1"))).events) == {"evt_a", "evt_b"}
    assert [i["event_id"] for i in ctx.store.dead_letters()] == ["evt_c"]


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1]",
        b'{"dry_run": "maybe"}',
        b'{"reason": 3}',
        b"[" * 1000 + b"]" * 1000,  # nests past Python's recursion limit
        b'{"all": "yes"}',  # a boolean in JSON is true or false, never a word or a number that stands for one
        b'{"all": 1}',
        b'{"reason": "retries_exhausted", "dry_run": 0}',
        b'{"all": true, "limit": 1.5}',
        b'{"all": true, "limit": "2"}',
        b'{"all": true, "cursor": "e30"}',  # a cursor continues a replay in batches: without `batch`?
        b'{"all": true, "batch": 2, "limit": 1}',
        b'{"all": true, "batch": 2, "dry_run": true}',
        b'{"all": true, "batch": 0}',
        b'{"all": true, "batch": 10001}',
        b'{"all": true, "batch": 2, "cursor": "bm90IGEgY3Vyc29y"}',  # "not a cursor"
        b'{"all": true, "batch": 2, "cursor": 7}',
        b'{"all": true, "batch": 2, "cursor": "%s"}' % b64(f'["{"0" * 16}", "", 1{"0" * 400}, null]'),  # huge
        b'{"all": true, "batch": 2, "cursor": "%s"}' % b64("[" * 5000 + "]" * 5000),  # nested too deep
    ],
)
def test_bulk_replay_refuses_unclear_requests(
    admin: Any, ctx: DeliveryContext, sandbox: SandboxServer, body: bytes
) -> None:
    dead_letter(ctx, sandbox, update("evt_a"))
    response = admin.post("/admin/dlq/replay", data=body, headers=AUTH, content_type="application/json")
    assert response.status_code == 400
    assert ctx.redis.llen(keys.USERCOM.rq_queue_key(keys.REPLAY)) == 0


def test_bulk_replay_in_batches_answers_a_cursor_until_done(
    admin: Any, ctx: DeliveryContext, sandbox: SandboxServer
) -> None:
    for n in range(3):
        dead_letter(ctx, sandbox, update(f"evt_{n}", user=f"u{n}"))
    body: dict[str, Any] = {"reason": "usercom_rejected", "batch": 2}
    first = admin.post("/admin/dlq/replay", json={**body, "cursor": None}, headers=AUTH)  # as a loop starts
    assert first.status_code == 202
    assert {k: v for k, v in first.get_json().items() if k != "cursor"} == {
        "selected": 2,
        "dry_run": False,
        "outcomes": {"replayed": 2},
    }
    cursor = first.get_json()["cursor"]
    other = admin.post("/admin/dlq/replay", json={"all": True, "batch": 2, "cursor": cursor}, headers=AUTH)
    assert other.status_code == 400 and "other filters" in other.get_json()["error"]["message"]
    last = admin.post("/admin/dlq/replay", json={**body, "cursor": cursor}, headers=AUTH)
    assert last.status_code == 202 and last.get_json() == {
        "selected": 1,
        "dry_run": False,
        "outcomes": {"replayed": 1},
        "cursor": None,
    }
    assert ctx.store.dead_letters() == []
    assert list(ctx.redis.scan_iter(f"{keys.USERCOM.prefix}:dlq:replayed:*")) == []  # done: nothing kept
    again = admin.post("/admin/dlq/replay", json={**body, "cursor": cursor}, headers=AUTH)
    assert again.status_code == 400 and "expired" in again.get_json()["error"]["message"]


def test_invalid_payload_replays_only_once_it_fits(admin: Any, admin_settings: Settings, redis: Redis) -> None:
    broken = stripe_event("customer.updated", {"id": "cus_1", "email": 42}, event_id="evt_bad")
    body = json.dumps(broken).encode()
    headers = {"Stripe-Signature": sign(body, SECRET)}
    assert (
        admin.post("/webhooks/stripe", data=body, headers=headers, content_type="application/json").status_code == 422
    )
    response = admin.post("/admin/dlq/stripe-evt_bad/replay", headers=AUTH)
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "still_invalid"
    assert "email" in json.dumps(response.get_json()["error"]["details"])  # which field, not only that


def test_a_future_dated_event_stays_refused_when_replayed(
    admin: Any, admin_settings: Settings, ctx: DeliveryContext
) -> None:
    """Refused at intake for being dated ahead of the clock; a replay must not let it win last-writer-wins
    against every later event."""
    ahead = int(time.time()) + admin_settings.max_clock_skew_seconds + 3600
    event = stripe_event("customer.updated", {"id": "cus_1", "metadata": {"user_id": "u1"}}, event_id="evt_ahead")
    body = json.dumps({**event, "created": ahead}).encode()
    headers = {"Stripe-Signature": sign(body, SECRET)}
    posted = admin.post("/webhooks/stripe", data=body, headers=headers, content_type="application/json")
    assert posted.status_code == 422
    response = admin.post("/admin/dlq/stripe-evt_ahead/replay", headers=AUTH)
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "still_invalid"
    assert "ahead of the relay's clock" in json.dumps(response.get_json()["error"]["details"])
    assert ctx.redis.llen(keys.USERCOM.rq_queue_key(keys.REPLAY)) == 0
    assert [i["event_id"] for i in ctx.store.dead_letters()] == ["evt_ahead"]


def test_a_replayed_event_of_a_mapped_type_with_nothing_to_send_is_not_said_to_be_unmapped(
    admin: Any, ctx: DeliveryContext
) -> None:
    """A Paddle refund still pending approval, refused at intake (say, dated ahead of the clock then): on replay it
    is valid and maps to nothing. Its type is mapped: the refusal must not send the operator to the mapping."""
    event = paddle_adjustment("refund", "pending_approval", "adjustment.created")
    described = Described(event["event_id"], "adjustment.created", int(time.time()))
    refused = ValidationError({"event_time": ["The event time is ahead of the relay's clock."]})
    item = invalid_item("paddle", event["event_id"], event["event_id"], described, event, refused, "invalid")
    assert ctx.store.reject(item, event["event_id"])
    response = admin.post(f"/admin/dlq/paddle-{event['event_id']}/replay", headers=AUTH)
    error = response.get_json()["error"]
    assert response.status_code == 409 and error["code"] == "not_mapped"
    assert "nothing to send" in error["message"], error


def test_an_update_naming_no_user_is_never_replayed_to_an_invented_one(
    admin: Any, ctx: DeliveryContext, sandbox: SandboxServer
) -> None:
    """Dead-lettered at intake as unresolved_identity: a replay has no one to deliver it to."""
    for n in range(2):
        assert ctx.store.accept(update(f"evt_nobody{n}", user="", plan=f"p{n}")) is True
    one = admin.post("/admin/dlq/stripe-evt_nobody0/replay", headers=AUTH)
    assert one.status_code == 409 and one.get_json()["error"]["code"] == "unresolved_identity"
    bulk = admin.post("/admin/dlq/replay", json={"reason": "unresolved_identity"}, headers=AUTH)
    assert bulk.get_json()["outcomes"] == {"unresolved_identity": 2}
    work(ctx, keys.REPLAY)
    assert [r for r in sandbox.state.requests if r["path"].startswith("/api/")] == []
    assert [i["event_id"] for i in ctx.store.dead_letters()] == ["evt_nobody0", "evt_nobody1"]
    ledger = ctx.store.ledger()
    assert (ledger["dead_lettered"], ledger["delivered"], ledger["in_flight"]) == (2, 0, 0)


def test_retention_drops_the_oldest_and_counts_them(admin: Any, ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    for n in range(6):
        dead_letter(ctx, sandbox, update(f"evt_{n}"))
    assert [i["event_id"] for i in ctx.store.dead_letters()] == ["evt_2", "evt_3", "evt_4", "evt_5"]
    status = admin.get("/status").get_json()["destinations"]["usercom"]
    assert status["dlq"] == {"size": 4, "by_reason": {"usercom_rejected": 4}, "dropped_by_retention": 2}
    assert status["ledger"]["dead_lettered"] == 6


def test_status_after_a_known_sequence(
    admin: Any, admin_settings: Settings, ctx: DeliveryContext, sandbox: SandboxServer
) -> None:
    before = time.time()
    assert admin.get("/status").get_json()["destinations"]["usercom"]["last_delivery_at"] is None
    assert ctx.store.accept(update("evt_1"))
    assert ctx.store.accept(update("evt_2", user="u2"))
    time.sleep(0.05)
    status = admin.get("/status").get_json()["destinations"]["usercom"]
    live = status["lanes"]["live"]
    assert (live["depth"], live["pending"], live["scheduled"]) == (2, 2, 0)
    assert live["oldest_pending_age_seconds"] >= 0.05
    assert status["lanes"]["replay"] == {"depth": 0, "scheduled": 0, "pending": 0, "oldest_pending_age_seconds": None}
    assert status["limiter"]["paused_until"] is None
    # u1 takes three calls (unknown: PUT 404, create, PUT); the first call for u2 is throttled.
    sandbox.state.custom_attributes.add("plan")  # created in User.com already: the v2 PUT takes it
    sandbox.state.faults.extend([Fault(0), Fault(0), Fault(0), Fault(429, "7")])
    work(ctx, keys.LIVE)
    document = admin.get("/status").get_json()
    assert list(document["destinations"]) == ["usercom"] and document["version"] == "0.1.0"
    status = document["destinations"]["usercom"]
    assert status["ledger"]["received"] == 2 and status["ledger"]["delivered"] == 1
    assert status["ledger"]["in_flight"] == 1
    assert status["lanes"]["live"]["depth"] == 0 and status["lanes"]["live"]["scheduled"] == 1
    assert status["lanes"]["live"]["pending"] == 1
    assert status["last_delivery_at_unix"] >= before and status["limiter"]["last_429_at_unix"] >= before
    # Every worker waits for Retry-After (7 s), at most RELAY_RETRY_MAX_DELAY_SECONDS (4 s in the tests).
    pause = status["limiter"]["paused_until_unix"] - status["limiter"]["last_429_at_unix"]
    assert pause == pytest.approx(admin_settings.retry_max_delay_seconds, abs=0.5)
    assert status["limiter"]["paused_until"].endswith("Z") and status["last_delivery_at"].endswith("Z")
    assert status["limiter"]["rate_limit_per_second"] == 1000.0  # USERCOM_RATE_LIMIT in conftest
    # Halved by the 429, then growing back by a fraction of the ceiling per second since it.
    since_429 = document["time_unix"] - status["limiter"]["last_429_at_unix"]
    grown = since_429 * 1000.0 * INCREASE_FRACTION_PER_SECOND
    assert 500.0 <= status["limiter"]["effective_rate_per_second"] <= 500.0 + grown + 1.0
    assert status["workers"] == {"live": 0, "replay": 0, "backfill": 0}
    for secret in (SECRET, USERCOM_KEY, TOKEN):
        assert secret not in str(document)


def test_the_trace_of_a_user_whose_id_holds_a_slash_is_reachable(
    served: str, http: urllib3.PoolManager, ctx: DeliveryContext, sandbox: SandboxServer
) -> None:
    """User ids may hold "/" (metadata.user_id = "org/42"): encoded (%2F) or not, it names the user."""
    assert ctx.store.accept(update("evt_ok", user="org/42"))
    work(ctx, keys.LIVE)
    dead_letter(ctx, sandbox, update("evt_bad", user="org/42"))
    assert ctx.store.accept(update("evt_other", user="org"))
    work(ctx, keys.LIVE)
    for path in ("/admin/users/org%2F42/trace", "/admin/users/org/42/trace"):
        response = http.request("GET", served + path, headers=AUTH)
        assert response.status == 200, (path, response.data)
        trace = response.json()
        assert (trace["user_id"], trace["destination"]) == ("org/42", "usercom")
        assert [(e["kind"], e["event_ids"]) for e in trace["entries"]] == [
            ("dead_letter", ["evt_bad"]),
            ("delivery", ["evt_ok"]),
        ]
    deeper = http.request("GET", served + "/admin/users/org%2F42%2Ftrace/trace", headers=AUTH)  # "org/42/trace"
    assert deeper.status == 200 and deeper.json()["user_id"] == "org/42/trace" and deeper.json()["entries"] == []


def test_the_trace_of_a_user_whose_id_starts_with_a_slash_is_its_own(
    served: str, http: urllib3.PoolManager, ctx: DeliveryContext, sandbox: SandboxServer
) -> None:
    """ "/abc" is a user id intake accepts, and not "abc": its trace was a redirect to the other's (Werkzeug
    merges the slashes of `/users//abc/trace`)."""
    assert ctx.store.accept(update("evt_slash", user="/abc"))
    assert ctx.store.accept(update("evt_plain", user="abc"))
    work(ctx, keys.LIVE)
    for path, user, event in (
        ("/admin/users/%2Fabc/trace", "/abc", "evt_slash"),
        ("/admin/users/abc/trace", "abc", "evt_plain"),
    ):
        response = http.request("GET", served + path, headers=AUTH, redirect=False)
        assert response.status == 200, (path, response.status)
        trace = response.json()
        assert (trace["user_id"], [e["event_ids"] for e in trace["entries"]]) == (user, [[event]])


def test_dead_letters_whose_id_holds_a_slash_are_shown_replayed_and_deleted(
    served: str, http: urllib3.PoolManager, ctx: DeliveryContext, sandbox: SandboxServer
) -> None:
    """An id is `<source>-<event id>`: a backfill files an invalid event under the id the provider's API
    gave it, "/" included; intake's event ids may hold ':' and '.'."""
    payload = {"id": "evt/1", "type": "customer.updated", "data": {"object": {"email": 42}}}
    described = Described("evt/1", "customer.updated", 100)
    refused = ValidationError({"data": ["Not valid."]})
    assert ctx.store.reject(invalid_item("stripe", "evt/1", "evt/1", described, payload, refused, "invalid"), "evt/1")
    dead_letter(ctx, sandbox, update("evt_a.b:c"), status=503)
    base = served + "/admin/dlq/"
    for item_id, path in (("stripe-evt/1", "stripe-evt%2F1"), ("stripe-evt_a.b:c", "stripe-evt_a.b:c")):
        shown = http.request("GET", base + path, headers=AUTH)
        assert shown.status == 200 and shown.json()["id"] == item_id, shown.data
    still_invalid = http.request("POST", base + "stripe-evt%2F1/replay", headers=AUTH)
    assert still_invalid.status == 409 and still_invalid.json()["error"]["code"] == "still_invalid"
    replayed = http.request("POST", base + "stripe-evt_a.b:c/replay", headers=AUTH)
    assert replayed.status == 202 and replayed.json() == {"id": "stripe-evt_a.b:c", "status": "replayed"}
    assert http.request("DELETE", base + "stripe-evt%2F1", headers=AUTH).status == 204
    assert http.request("GET", base + "stripe-evt%2F1", headers=AUTH).status == 404
    assert ctx.store.dead_letters() == []
    bulk = http.request("POST", base + "replay", json={"all": True, "dry_run": True}, headers=AUTH)  # still bulk
    assert bulk.status == 200 and bulk.json()["matched"] == 0


def post_event(client: Any, event: dict[str, Any]) -> int:
    body = json.dumps(event)
    headers = {"Stripe-Signature": sign(body, SECRET)}
    return int(client.post("/webhooks/stripe", data=body, headers=headers, content_type="application/json").status_code)


def refused_under_a_digest(ctx: DeliveryContext, event: dict[str, Any], digest: str) -> None:
    """Keep `event` as intake keeps an invalid payload it could read no event id from: under a digest of its
    body (here: as if the schema of the day had refused it)."""
    described = Described(None, "customer.updated", event["created"])
    refused = ValidationError({"_schema": ["Refused by the schema of the day."]})
    assert ctx.store.reject(invalid_item("stripe", digest, None, described, event, refused, "invalid"), digest)


def test_replaying_an_event_pending_already_counts_it_once(
    admin: Any, ctx: DeliveryContext, sandbox: SandboxServer
) -> None:
    """An invalid payload's dead letter is kept under a digest of its body (no event id can be read from
    it). Sent again and accepted since under its own id, the same event is pending when the dead letter is
    replayed: it goes out once, the replayed copy counts as coalesced, and the ledger ends balanced."""
    event = stripe_event("customer.updated", {"id": "cus_1", "metadata": {"user_id": "u1"}}, event_id="evt_twice")
    refused_under_a_digest(ctx, event, "0123abcd")
    assert post_event(admin, event) == 202
    assert ctx.store.ledger()["in_flight"] == 1
    for lane in (None, keys.LIVE):  # replayed while its state waits, then while a delivery holds it in hand
        if lane == keys.LIVE:
            event["id"] = "evt_twice_in_hand"
            refused_under_a_digest(ctx, event, "4567ef")
            assert post_event(admin, event) == 202
            ctx.redis.rename(keys.USERCOM.user_state("stripe", "user:u1"), keys.USERCOM.in_hand("stripe", "user:u1"))
        item_id = "stripe-0123abcd" if lane is None else "stripe-4567ef"
        assert admin.post(f"/admin/dlq/{item_id}/replay", headers=AUTH).status_code == 202
        assert ctx.redis.llen(keys.USERCOM.rq_queue_key(keys.REPLAY)) == 0  # nothing queued twice
        pending = {**ctx.redis.hgetall(keys.USERCOM.user_state("stripe", "user:u1"))}
        pending.update(ctx.redis.hgetall(keys.USERCOM.in_hand("stripe", "user:u1")))
        assert ctx.store.ledger()["in_flight"] == len(decode(pending).events)
    work(ctx, keys.LIVE)
    ledger = ctx.store.ledger()
    assert (ledger["received"], ledger["coalesced"] + ledger["delivered"], ledger["in_flight"]) == (4, 4, 0)
    assert (ledger["dead_lettered"], ledger["replayed"]) == (0, 2)


def test_an_event_accepted_while_the_same_is_pending_counts_once(
    admin: Any, ctx: DeliveryContext, sandbox: SandboxServer
) -> None:
    """The other order: the dead letter kept under a digest is replayed first, then the provider's copy
    arrives under its own id (the dedup memory never saw that id; a backfill reading an event back past
    the dedup memory is the same case). The copy is counted coalesced into the pending event."""
    event = stripe_event("customer.updated", {"id": "cus_1", "metadata": {"user_id": "u1"}}, event_id="evt_again")
    refused_under_a_digest(ctx, event, "89abcdef")
    assert admin.post("/admin/dlq/stripe-89abcdef/replay", headers=AUTH).status_code == 202
    state, in_hand = keys.USERCOM.user_state("stripe", "user:u1"), keys.USERCOM.in_hand("stripe", "user:u1")
    ctx.redis.rename(state, in_hand)  # a delivery holds it (a retry waits): the copy counts against it there too
    assert post_event(admin, event) == 202
    ledger = ctx.store.ledger()
    assert (ledger["received"], ledger["coalesced"], ledger["in_flight"]) == (2, 1, 1)
    assert ctx.redis.llen(keys.USERCOM.rq_queue_key(keys.LIVE)) == 0  # no second job: one event pending
    work(ctx, keys.REPLAY)
    ledger = ctx.store.ledger()
    assert (ledger["delivered"], ledger["coalesced"], ledger["in_flight"]) == (1, 1, 0)
    assert sandbox.state.user_by_custom_id("u1") is not None


def test_a_replayed_user_takes_no_second_job_but_for_live_traffic(
    admin: Any, ctx: DeliveryContext, sandbox: SandboxServer
) -> None:
    """A replay queues its user on the replay lane and says so in the pending state, as intake does: an
    event read back by a backfill for that user then queues nothing more, while a live one still does
    (live traffic never waits behind a replay)."""
    event = stripe_event("customer.updated", {"id": "cus_1", "metadata": {"user_id": "u1"}}, event_id="evt_dead")
    refused_under_a_digest(ctx, event, "feedc0de")
    assert admin.post("/admin/dlq/stripe-feedc0de/replay", headers=AUTH).status_code == 202
    lengths = {lane: keys.USERCOM.rq_queue_key(lane) for lane in keys.LANES}
    assert ctx.store.accept(update("evt_backfill", event_time=event["created"] + 1, plan="pro"), lane=keys.BACKFILL)
    assert {lane: ctx.redis.llen(key) for lane, key in lengths.items()} == {
        keys.LIVE: 0,
        keys.REPLAY: 1,
        keys.BACKFILL: 0,
    }
    assert ctx.store.accept(update("evt_live", event_time=event["created"] + 2, plan="max"))
    assert [ctx.redis.llen(lengths[lane]) for lane in (keys.LIVE, keys.REPLAY)] == [1, 1]
    work(ctx, keys.LIVE)
    ledger = ctx.store.ledger()
    assert (ledger["received"], ledger["in_flight"], ledger["dead_lettered"]) == (3, 0, 0)
    assert sandbox.state.user_by_custom_id("u1")["attributes"]["plan"] == "max"  # type: ignore[index]


@pytest.mark.parametrize(
    "path", ["/console", "/console/console.js", "/admin/dlq", "/admin/nothing", "/status", "/healthz"]
)
def test_every_answer_forbids_framing_and_sniffing_and_what_operators_read_is_not_cached(admin: Any, path: str) -> None:
    """The console cannot be framed by another page (its buttons under that page's clicks), runs only its
    own files, and what it and the admin API show stays out of caches; errors (a 404) carry the same."""
    with admin.get(path, headers=AUTH) as response:  # a static file's answer holds the file open
        headers = response.headers
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert (headers.get("Cache-Control") == "no-store") == (path != "/healthz")


def test_a_per_event_job_run_again_after_its_dead_letter_was_replayed_sends_nothing(
    admin: Any, ctx: DeliveryContext, sandbox: SandboxServer
) -> None:
    """A job queued before the upgrade (one event's whole update) dead-letters its event, counted by the
    event's outcome key, and its worker dies before rq marks it done. The operator replays the dead letter,
    which is delivered; rq's re-run of the old job must find the event counted, not send it again."""
    old = update("evt_old")
    ctx.redis.hincrby(keys.USERCOM.ledger, "received", 1)  # what the per-event release counted at intake
    sandbox.state.faults.append(Fault(400))
    assert deliver_update(ctx, old) == "dead_lettered"
    assert admin.post("/admin/dlq/stripe-evt_old/replay", headers=AUTH).status_code == 202
    work(ctx, keys.REPLAY)
    calls = len(sandbox.state.requests)
    deliver_update(ctx, old)  # rq's re-run
    assert len(sandbox.state.requests) == calls
    ledger = ctx.store.ledger()
    assert (ledger["received"], ledger["delivered"], ledger["in_flight"]) == (1, 1, 0)


def test_a_per_event_job_failing_for_good_after_parking_its_event_counts_it_once(
    ctx: DeliveryContext, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job queued before the upgrade parks its event in its user's state, then fails on every run (a
    bug). After its last run the event is dead-lettered with what is pending for the user, once: the
    user's next delivery neither sends nor counts it again."""
    old = update("evt_parked", plan="starter")
    ctx.redis.hincrby(keys.USERCOM.ledger, "received", 1)  # what the per-event release counted at intake

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("a bug")

    with monkeypatch.context() as patched:
        patched.setattr(ctx.client, "send", broken)
        with pytest.raises(RuntimeError):
            deliver_update(ctx, old)
    job = Job.create(
        DELIVER_FUNC,
        args=(old.to_dict(), 1, None, keys.LIVE),
        connection=ctx.redis,
        serializer=JSONSerializer,
        id=job_id_for(old, destination="usercom"),
        origin=keys.USERCOM.queue_name(keys.LIVE),
    )
    job.retries_left = 0  # its last run
    on_job_failure(job, ctx.redis, RuntimeError, RuntimeError("a bug"), None)
    assert [item["event_id"] for item in ctx.store.dead_letters()] == ["evt_parked"]
    assert ctx.store.accept(update("evt_next", event_time=200, plan="pro"))
    work(ctx, keys.LIVE)
    assert sandbox.state.user_by_custom_id("u1")["attributes"] == {"plan": "pro"}  # type: ignore[index]
    ledger = ctx.store.ledger()
    assert (ledger["received"], ledger["dead_lettered"], ledger["delivered"], ledger["in_flight"]) == (2, 1, 1, 0)
