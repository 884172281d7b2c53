"""The real thing: `relay web` under gunicorn, `relay worker`, redis-server and the User.com
sandbox, all as separate processes or sockets. Every mapped event type goes in, signed with
the official stripe package, built from the shared real payloads; the sandbox's final user
state, the dead-letter queue and the ledger are checked at the end."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from service.config import Settings
from service.devtools.embedded_redis import RedisProcess
from service.devtools.usercom_sandbox import SandboxServer
from service.devtools.userkit_sandbox import UserKitServer
from service.store import keys
from service.store.ledger import Store
from tests.conftest import (
    OLD_SECRET,
    SECRET,
    SOURCE_ENV,
    USERCOM_KEY,
    close_connections,
    lemonsqueezy_headers,
    load_fixture,
    paddle_headers,
    sign,
    standard_event,
    standard_headers,
    stripe_event,
)
from tests.integration.redis_launch import start_relay
from tests.ports import unused_port

USERKIT_SECRET = "uk_e2e_app_secret_9876543210"
RELAY = str(Path(sys.executable).with_name("relay"))


def _obj(name: str) -> dict[str, Any]:
    body = load_fixture(name)
    return copy.deepcopy(body["object"] if isinstance(body.get("object"), dict) else body)


def events() -> list[dict[str, Any]]:
    """Every mapped type at least once, in the order they are posted (delivered in any order: a batch runs
    on several threads; what is checked holds whatever the order)."""
    customer = _obj("openapi-fixtures3.customer.json")
    customer["metadata"] = {"user_id": "user-42"}  # teaches the relay cus_QXg1o8vcGmoR32 -> user-42
    subscription = _obj("openapi-fixtures3.subscription.json")
    wrapped = [
        ("customer.updated", customer),
        ("customer.subscription.created", subscription),
        ("invoice.paid", _obj("openapi-fixtures3.invoice.json")),
        ("customer.subscription.paused", subscription),
        ("customer.subscription.resumed", subscription),
        ("customer.updated", _obj("pay-data.customer.updated.json")),
        ("invoice.payment_failed", _obj("pay-data.invoice.payment_failed.json")),
        ("customer.subscription.created", _obj("pay-data.subscription.created.json")),
        ("customer.subscription.trial_will_end", _obj("pay-data.subscription.trial_will_end.json")),
        ("customer.subscription.updated", _obj("pay-data.subscription.updated.json")),
        ("customer.subscription.deleted", _obj("pay-data.subscription.deleted.json")),
        ("checkout.session.completed", _obj("pay-data.checkout.session.completed.json")),
        ("charge.refunded", _obj("pay-data.charge.refunded.json")),
        ("customer.deleted", _obj("pay-data.customer.deleted.json")),
        ("checkout.session.completed", _obj("openapi-fixtures3.checkout.session.json")),  # nobody: dead-letter
    ]
    created = 1_760_000_000
    return [
        load_fixture("event.customer.created.inngest-cli-capture.json"),
        *(stripe_event(t, o, event_id=f"evt_e2e_{i}", created=created + i) for i, (t, o) in enumerate(wrapped)),
        load_fixture("event.customer.subscription.updated.stripe-docs-example.json"),
        load_fixture("event.charge.succeeded.inngest-cli-capture.json"),  # not mapped: ignored
    ]


@pytest.fixture
def relay(tmp_path: Path, sandbox: SandboxServer) -> Iterator[dict[str, Any]]:
    yield from _relay(tmp_path, sandbox, {})


@pytest.fixture
def relay_quick_keepalive(tmp_path: Path, sandbox: SandboxServer) -> Iterator[dict[str, Any]]:
    """As `relay`, with a 1 s keep-alive: a stop waits for an idle kept-alive connection that long."""
    yield from _relay(tmp_path, sandbox, {"RELAY_WEB_KEEPALIVE_SECONDS": "1"})


@pytest.fixture
def userkit() -> Iterator[UserKitServer]:
    server = UserKitServer(app_secret=USERKIT_SECRET).start()
    yield server
    server.stop()


@pytest.fixture
def relay_to_both(tmp_path: Path, sandbox: SandboxServer, userkit: UserKitServer) -> Iterator[dict[str, Any]]:
    destinations = {
        "RELAY_DESTINATIONS": "usercom,userkit",
        "USERKIT_API_URL": userkit.base_url,
        "USERKIT_APP_SECRET": USERKIT_SECRET,
        "USERKIT_RATE_LIMIT": "1000",
        "USERKIT_BURST": "100",
        # the checkouts below name the user in custom data, as a relay whose checkouts are its own trusts
        "RELAY_TRUSTED_IDENTITY_FIELDS": "paddle.custom_data,lemonsqueezy.custom_data",
    }
    yield from _relay(tmp_path, sandbox, destinations)


def _relay(tmp_path: Path, sandbox: SandboxServer, extra_env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """web (gunicorn) and `relay worker` as subprocesses, on their own Redis."""
    redis_server = RedisProcess(tmp_path / "redis").start()
    env = {
        **os.environ,
        "REDIS_URL": redis_server.url,
        "STRIPE_WEBHOOK_SECRETS": f"{SECRET},{OLD_SECRET}",
        **SOURCE_ENV,
        "USERCOM_API_URL": sandbox.base_url,
        "USERCOM_API_KEY": USERCOM_KEY,
        "RELAY_LOG_LEVEL": "DEBUG",
        "USERCOM_RATE_LIMIT": "1000",
        "USERCOM_BURST": "100",
        "RELAY_METRICS_PORT": str(unused_port()),
        **extra_env,
    }
    base, processes = start_relay(tmp_path, env, "web", "worker")
    http = urllib3.PoolManager(retries=False, timeout=5)
    redis = Redis.from_url(redis_server.url)
    settings = Settings.from_env(env)
    try:
        yield {
            "base": base,
            "http": http,
            "redis": redis,
            "logs": tmp_path,
            "processes": processes,
            "settings": settings,
            "worker_metrics": f"http://127.0.0.1:{env['RELAY_METRICS_PORT']}/metrics",
        }
    finally:  # also when the test using it fails: nothing is left running
        close_connections(http)  # a kept-alive connection would hold the web's graceful stop for its keep-alive
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes.values():
            process.wait(timeout=30)
        redis.close()
        redis_server.stop()


# _relay for a test body: `with running_relay(...) as relay:` stops it all as the block ends, failed or not.
running_relay = contextlib.contextmanager(_relay)


def post(relay: dict[str, Any], body: bytes, secret: str = SECRET) -> Any:
    headers = {"Content-Type": "application/json", "Stripe-Signature": sign(body, secret)}
    return relay["http"].request("POST", relay["base"] + "/webhooks/stripe", body=body, headers=headers)


def wait_settled(store: Store, timeout: float = 30) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while (ledger := store.ledger())["in_flight"] > 0:
        assert time.monotonic() < deadline, ledger
        time.sleep(0.1)
    return ledger


def test_every_mapped_event_reaches_usercom(relay: dict[str, Any], sandbox: SandboxServer) -> None:
    answers = [post(relay, json.dumps(event).encode()) for event in events()]
    statuses = [a.status for a in answers]
    assert statuses == [202] * 17 + [200], [a.data for a in answers]
    assert json.loads(answers[-1].data)["status"] == "ignored"
    again = post(relay, json.dumps(events()[0]).encode(), secret=OLD_SECRET)
    assert (again.status, json.loads(again.data)["status"]) == (200, "duplicate")
    invalid = post(relay, json.dumps(stripe_event("invoice.paid", {"id": "in_1"}, event_id="evt_bad")).encode())
    assert invalid.status == 422

    store = Store.from_settings(relay["redis"], relay["settings"])
    ledger = wait_settled(store)
    # Events waiting for the same user go out merged: delivered + coalesced = the 16 deliverable ones.
    assert (ledger["received"], ledger["ignored"], ledger["dead_lettered"], ledger["in_flight"]) == (19, 1, 2, 0)
    assert ledger["delivered"] + ledger["coalesced"] == 16 and ledger["duplicates"] == 1
    puts = [r for r in sandbox.state.requests if r["method"] == "PUT" and r.get("status") == 200]
    assert len(puts) == ledger["delivered"]
    reasons = sorted((d["reason"], d["event_id"]) for d in store.dead_letters())
    assert reasons == [("invalid_payload", "evt_bad"), ("unresolved_identity", "evt_e2e_14")]

    def user(user_id: str) -> dict[str, Any]:
        found = sandbox.state.user_by_custom_id(user_id)
        assert found is not None, f"{user_id} never reached User.com"
        return found

    learned = user("user-42")  # customer cus_QXg1o8vcGmoR32, learned from its metadata
    assert learned["attributes"] == {
        "stripe_customer_id": "cus_QXg1o8vcGmoR32",
        "subscription_status": "active",
        "plan": "price_1PgafmB7WZ01zgkW6dKueIc5",
        "plan_interval": "month",
        "mrr": 20.0,
        "currency": "usd",
        "current_period_end": "2000-12-08T15:02:53Z",
        "cancel_at_period_end": True,
        "cancel_at": "2009-02-13T23:31:30Z",  # the fixture's own cancel_at (1234567890)
        "last_payment_at": "2025-10-09T08:53:22Z",
        "last_payment_amount": 0.0,
    }
    # Tags are a set in User.com (add-only) and come in two deliveries in either order: evt_e2e_0
    # waits under the user, evt_e2e_1..4 under the customer (UserUpdate.hint), each merged alone.
    # No "paying": its invoice was paid for 0 (last_payment_amount).
    assert sorted(learned["tags"]) == ["stripe-customer", "subscriber"]
    assert sandbox.state.user_by_custom_id("cus_QXg1o8vcGmoR32") is None

    churned = user("cus_00000000000000")
    assert churned["attributes"]["subscription_status"] == "canceled"
    assert churned["attributes"]["mrr"] == 0
    assert churned["attributes"]["trial_end"] == "2022-11-20T19:19:43Z"
    assert churned["tags"] == ["subscriber", "trial-ending", "churned"]
    assert user("cus_Nc4kL4EPtG5SKe")["attributes"]["mrr"] == 42.42
    assert user("cus_LCtB7H0tTFBxEn")["tags"] == ["stripe-customer"]
    failed = user("cus_1234")
    assert failed["attributes"]["payment_failed_at"] == "2025-10-09T08:53:26Z"
    assert failed["tags"] == ["stripe-customer", "payment-failed"]
    checkout = user("cus_M5wW9RPFk9xNZ5")
    assert (checkout["email"], checkout["tags"]) == ("chris@gorails.com", ["checkout-completed"])
    assert user("cus_0dUMWLtzCTagWs")["attributes"] == {
        "last_refund_at": "2025-10-09T08:53:32Z",
        "last_refund_amount": 5.0,
    }
    assert user("cus_EGxrcooteA3WAb")["attributes"] == {"billing_status": "deleted"}

    for name in ("web", "worker"):
        text = (relay["logs"] / f"{name}.log").read_text()
        for secret in (SECRET, OLD_SECRET, USERCOM_KEY):
            assert secret not in text, f"{name} log leaks a secret"
    worker_lines = [
        json.loads(line) for line in (relay["logs"] / "worker.log").read_text().splitlines() if line.startswith("{")
    ]
    delivered = [
        e for e in worker_lines if e.get("outcome") == "delivered" and e.get("user_id") == "cus_00000000000000"
    ]
    assert delivered and delivered[0]["event_id"].startswith("evt_e2e_")
    web_lines = [
        json.loads(line) for line in (relay["logs"] / "web.log").read_text().splitlines() if line.startswith("{")
    ]
    assert any(e.get("event_id") == "evt_e2e_0" and e.get("outcome") == "accepted" for e in web_lines)


def test_each_source_reaches_both_destinations(
    relay_to_both: dict[str, Any], sandbox: SandboxServer, userkit: UserKitServer
) -> None:
    relay = relay_to_both
    userkit.state.seed(["u_std", "u_paddle", "u_lemon", "user-42"])
    paddle = load_fixture("pay.subscription.created.json", "paddle_billing")
    paddle["data"]["custom_data"] = {"user_id": "u_paddle"}
    lemon = load_fixture("pay.subscription_created.json", "lemon_squeezy")
    lemon["meta"]["custom_data"] = {"user_id": "u_lemon"}
    lemon["data"]["attributes"]["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    standard = standard_event(
        "u_std", attributes={"email": "std@example.com", "first_name": "Std", "plan": "team"}, tags=["beta"]
    )
    stripe = stripe_event(
        "customer.created",
        {"id": "cus_e2e", "email": "ada@example.com", "name": "Ada Lovelace", "metadata": {"user_id": "user-42"}},
        event_id="evt_both_1",
    )
    sent = [
        ("stripe", stripe, lambda body: {"Stripe-Signature": sign(body)}),
        ("standard", standard, lambda body: standard_headers(body, "msg_e2e_1")),
        ("paddle", paddle, paddle_headers),
        ("lemonsqueezy", lemon, lemonsqueezy_headers),
    ]
    for source, payload, signer in sent:
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", **signer(body)}
        answer = relay["http"].request("POST", f"{relay['base']}/webhooks/{source}", body=body, headers=headers)
        assert answer.status == 202, (source, answer.data)
    store = Store.from_settings(relay["redis"], relay["settings"])
    for destination in ("usercom", "userkit"):
        ledger = wait_settled(store.for_destination(destination))
        assert (ledger["received"], ledger["in_flight"]) == (4, 0), (destination, ledger)
    # User.com: everything each source said.
    std = sandbox.state.user_by_custom_id("u_std")
    assert std is not None and std["email"] == "std@example.com"
    assert (std["attributes"], std["tags"]) == ({"plan": "team"}, ["beta"])
    paid = sandbox.state.user_by_custom_id("u_paddle")
    assert paid is not None and paid["attributes"]["mrr"] == 432.0 and paid["tags"] == ["subscriber"]
    squeezed = sandbox.state.user_by_custom_id("u_lemon")
    assert squeezed is not None and squeezed["email"] == "dan@lemonsqueezy.com"
    assert squeezed["attributes"]["subscription_status"] == "on_trial" and squeezed["tags"] == ["subscriber", "trial"]
    assert sandbox.state.user_by_custom_id("user-42")["email"] == "ada@example.com"  # type: ignore[index]
    # UserKit: name, email and phone only; the Paddle subscription carries none, so it is ignored there.
    users = userkit.state.users
    assert (users["u_std"]["name"], users["u_std"]["email"]) == ("Std", "std@example.com")
    assert (users["u_lemon"]["name"], users["u_lemon"]["email"]) == ("Dan R", "dan@lemonsqueezy.com")
    assert (users["user-42"]["name"], users["user-42"]["email"]) == ("Ada Lovelace", "ada@example.com")
    assert users["u_paddle"]["email"] is None
    userkit_ledger = store.for_destination("userkit").ledger()
    assert (userkit_ledger["delivered"], userkit_ledger["ignored"]) == (3, 1)
    for name in ("web", "worker"):
        text = (relay["logs"] / f"{name}.log").read_text()
        for secret in (USERKIT_SECRET, *SOURCE_ENV.values()):
            for part in secret.split(","):
                assert part not in text, f"{name} log leaks a secret"


def test_sigterm_stops_web_and_worker_cleanly(relay_quick_keepalive: dict[str, Any]) -> None:
    relay = relay_quick_keepalive
    # A client keeps its connection alive, idle, across the stop: the web still stops (once that
    # connection's keep-alive time is out) and the idle connection ends quietly.
    assert relay["http"].request("GET", relay["base"] + "/healthz").status == 200
    for process in relay["processes"].values():
        process.send_signal(signal.SIGTERM)
    for name, process in relay["processes"].items():
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            # What every process of it was doing (relay prints its threads' stacks on SIGUSR1).
            for pid in [process.pid, *_descendants(process.pid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGUSR1)
            time.sleep(2)
            log = (relay["logs"] / f"{name}.log").read_text()[-12000:]
            pytest.fail(f"{name} did not stop within 30 s of SIGTERM; its stacks:\n{log}")
        assert code == 0, f"{name} exited with {code}"
    # An idle kept-alive connection ends quietly (it once ended in a "socket error" traceback).
    assert "Traceback" not in (relay["logs"] / "web.log").read_text()


def _descendants(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = Path(f"/proc/{parent}/task/{parent}/children")
        kids = [int(c) for c in children.read_text().split()] if children.exists() else []
        found += kids
        frontier += kids
    return found


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_add_up_across_processes(relay: dict[str, Any], sandbox: SandboxServer) -> None:
    accepted = [post(relay, json.dumps(e).encode()).status for e in events()[1:6]]  # five mapped events
    assert accepted == [202] * 5
    for _ in range(3):  # three bad signatures
        post(relay, b"{}", secret="whsec_wrong")
    wait_settled(Store.from_settings(relay["redis"], relay["settings"]))
    deadline = time.monotonic() + 30
    while (
        relay["redis"].llen(keys.USERCOM.rq_queue_key(keys.LIVE)) > 0
    ):  # jobs of events merged into another's, still to run
        assert time.monotonic() < deadline
        time.sleep(0.05)
    web = samples(relay["http"].request("GET", relay["base"] + "/metrics").data.decode())
    by_outcome: dict[str, float] = {}
    for (name, labels), value in web.items():
        if name == "relay_webhooks_total":
            outcome = dict(labels)["outcome"]
            by_outcome[outcome] = by_outcome.get(outcome, 0) + value
    assert by_outcome == {"accepted": 5, "signature_invalid": 3}  # counted in 2 gunicorn processes, added up
    assert web[("relay_ingest_duration_seconds_count", (("source", "stripe"),))] == 8
    assert web[("relay_events_total", (("destination", "usercom"), ("state", "received")))] == 5
    assert web[("relay_queue_depth", (("destination", "usercom"), ("lane", "live")))] == 0
    assert web[("relay_redis_up", ())] == 1
    worker = samples(relay["http"].request("GET", relay["worker_metrics"]).data.decode())
    live = (("destination", "usercom"), ("lane", "live"))
    delivered = worker[("relay_deliveries_total", (*live, ("outcome", "delivered")))]
    coalesced = worker.get(("relay_deliveries_total", (*live, ("outcome", "coalesced"))), 0)
    assert delivered + coalesced == 5  # counted in the worker processes, added up
    assert worker[("relay_delivery_latency_seconds_count", ())] == delivered
    puts = sum(
        value
        for (name, labels), value in worker.items()
        if name == "relay_usercom_requests_total"
        and dict(labels)["endpoint"].startswith("PUT ")
        and dict(labels)["status"] == "200"
    )
    assert puts == delivered
