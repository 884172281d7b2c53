"""Identity from buyer-settable fields, through the real webhook endpoint, a worker and the User.com
sandbox: a Payment Link's `client_reference_id` (or checkout custom data) naming someone else's user
id never overwrites that user, and a learned customer -> user mapping is never re-pointed (the event
is dead-lettered as `identity_conflict`, counted, and the ledger balances)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis import Redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from service import create_app
from service.config import Settings
from service.devtools.usercom_sandbox import SandboxServer
from service.store import keys
from service.web.schemas import WebhookAnswer
from tests.conftest import paddle_headers, sign, stripe_event
from workers.delivery.context import DeliveryContext, configure
from workers.runner import build_context

TOKEN = "identity-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VICTIM = {"id": "cus_victim", "email": "victim@example.com", "name": "Vera Victim", "metadata": {"user_id": "victim"}}
ATTACKER = {"id": "cus_attacker", "email": "mallory@evil.example", "name": "Mallory Attacker"}


class Relay:
    """The web app and a worker of one configuration, on the shared Redis and sandbox."""

    def __init__(self, env: dict[str, str], **extra: str) -> None:
        self.settings = Settings.from_env({**env, "RELAY_ADMIN_TOKEN": TOKEN, **extra})
        self.client = create_app(self.settings).test_client()
        self.ctx: DeliveryContext = build_context(self.settings, "usercom")
        configure(self.ctx)

    def post(self, event_type: str, obj: dict[str, Any], event_id: str) -> Any:
        body = json.dumps(stripe_event(event_type, obj, event_id=event_id, created=int(time.time()))).encode()
        headers = {"Stripe-Signature": sign(body)}
        return self.client.post("/webhooks/stripe", data=body, headers=headers, content_type="application/json")

    def work(self) -> None:
        SimpleWorker([self.ctx.queues[keys.LIVE]], connection=self.ctx.redis, serializer=JSONSerializer).work(
            burst=True
        )

    def ledger_balances(self) -> bool:
        counts = self.ctx.store.ledger()
        settled = sum(counts.get(name, 0) for name in ("delivered", "coalesced", "ignored", "dead_lettered"))
        return counts["received"] == settled


@pytest.fixture
def relays(env: dict[str, str], redis: Redis) -> Iterator[list[Relay]]:
    made: list[Relay] = []
    yield made
    for relay in made:
        relay.ctx.redis.close()


def conflicts() -> float:
    labels = {"source": "stripe", "event_type": "checkout.session.completed", "outcome": "identity_conflict"}
    return REGISTRY.get_sample_value("relay_webhooks_total", labels) or 0.0


def checkout(client_reference_id: str) -> dict[str, Any]:
    """The attacker's purchase through a Payment Link whose URL names the victim."""
    return {
        "id": "cs_attack",
        "customer": ATTACKER["id"],
        "client_reference_id": client_reference_id,
        "customer_details": {"email": ATTACKER["email"]},
    }


def assert_victim_untouched(sandbox: SandboxServer) -> None:
    victim = sandbox.state.user_by_custom_id("victim")
    assert victim is not None
    assert (victim["email"], victim["first_name"], victim["last_name"]) == ("victim@example.com", "Vera", "Victim")


def test_an_untrusted_client_reference_id_never_names_the_user(
    env: dict[str, str], relays: list[Relay], sandbox: SandboxServer
) -> None:
    relay = Relay(env)  # default: no buyer-settable field trusted
    relays.append(relay)
    assert relay.post("customer.created", VICTIM, "evt_victim").status_code == 202
    assert relay.post("checkout.session.completed", checkout("victim"), "evt_checkout").status_code == 202
    assert relay.post("customer.updated", ATTACKER, "evt_attacker_name").status_code == 202
    relay.work()
    assert_victim_untouched(sandbox)
    attacker = sandbox.state.user_by_custom_id("cus_attacker")  # the customer's own identity
    assert attacker is not None and attacker["email"] == "mallory@evil.example"
    assert relay.ctx.redis.hget(keys.customer_map("stripe"), "cus_attacker") is None
    assert relay.ledger_balances() and relay.ctx.store.ledger().get("dead_lettered", 0) == 0


def test_a_learned_customer_is_never_re_pointed_to_another_user(
    env: dict[str, str], relays: list[Relay], sandbox: SandboxServer
) -> None:
    relay = Relay(env, RELAY_TRUSTED_IDENTITY_FIELDS="stripe.client_reference_id")
    relays.append(relay)
    attacker_customer = {**ATTACKER, "metadata": {"user_id": "mallory"}}  # learned: cus_attacker -> mallory
    assert relay.post("customer.created", VICTIM, "evt_victim").status_code == 202
    assert relay.post("customer.created", attacker_customer, "evt_attacker").status_code == 202
    before = conflicts()

    answer = relay.post("checkout.session.completed", checkout("victim"), "evt_checkout")
    assert answer.status_code == 202 and answer.get_json()["status"] == "identity_conflict"
    assert conflicts() == before + 1
    resent = relay.post("checkout.session.completed", checkout("victim"), "evt_checkout")  # the provider's retry
    assert resent.status_code == 200 and resent.get_json()["status"] == "duplicate"
    # Later events of the attacker's customer (no metadata) still go to the attacker.
    assert relay.post("customer.updated", ATTACKER, "evt_attacker_name").status_code == 202
    relay.work()

    assert_victim_untouched(sandbox)
    assert relay.ctx.redis.hget(keys.customer_map("stripe"), "cus_attacker") == b"mallory"
    mallory = sandbox.state.user_by_custom_id("mallory")
    assert mallory is not None and mallory["first_name"] == "Mallory"
    listed = relay.client.get("/admin/dlq?reason=identity_conflict", headers=AUTH).get_json()
    assert [item["event_id"] for item in listed["items"]] == ["evt_checkout"]
    assert "mapped to user mallory" in listed["items"][0]["message"]
    metrics = relay.client.get("/metrics").get_data(as_text=True)
    assert 'relay_dlq_size{destination="usercom",reason="identity_conflict"} 1.0' in metrics
    assert relay.ledger_balances() and relay.ctx.store.ledger()["dead_lettered"] == 1


def test_trusted_metadata_cannot_re_point_a_learned_customer_either(
    env: dict[str, str], relays: list[Relay], sandbox: SandboxServer
) -> None:
    relay = Relay(env)
    relays.append(relay)
    assert relay.post("customer.created", VICTIM, "evt_victim").status_code == 202
    assert relay.post("customer.created", {**ATTACKER, "metadata": {"user_id": "mallory"}}, "evt_a").status_code == 202
    moved = relay.post("customer.updated", {**ATTACKER, "metadata": {"user_id": "victim"}}, "evt_moved")
    assert moved.status_code == 202 and moved.get_json()["status"] == "identity_conflict"
    relay.work()
    assert_victim_untouched(sandbox)
    assert relay.ctx.redis.hget(keys.customer_map("stripe"), "cus_attacker") == b"mallory"
    assert relay.ledger_balances()


def test_paddle_custom_data_from_the_browser_never_names_the_user(
    env: dict[str, str], relays: list[Relay], sandbox: SandboxServer
) -> None:
    relay = Relay(env)
    relays.append(relay)
    assert relay.post("customer.created", VICTIM, "evt_victim").status_code == 202
    event = {
        "event_id": "evt_paddle_1",
        "event_type": "customer.updated",
        "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": {"id": "ctm_attacker", "name": "Mallory Attacker", "email": "mallory@evil.example"},
    }
    event["data"]["custom_data"] = {"user_id": "victim"}
    body = json.dumps(event).encode()
    answer = relay.client.post(
        "/webhooks/paddle", data=body, headers=paddle_headers(body), content_type="application/json"
    )
    assert answer.status_code == 202
    relay.work()
    assert_victim_untouched(sandbox)
    assert sandbox.state.user_by_custom_id("ctm_attacker") is not None


def test_an_event_naming_no_one_is_answered_as_kept_not_accepted(
    env: dict[str, str], relays: list[Relay], sandbox: SandboxServer
) -> None:
    relay = Relay(env)
    relays.append(relay)
    refund = {"id": "ch_1", "object": "charge", "amount_refunded": 500, "currency": "usd", "customer": None}
    answer = relay.post("charge.refunded", refund, "evt_nobody")
    assert answer.status_code == 202 and answer.get_json()["status"] == "unresolved_identity"
    assert WebhookAnswer().validate(answer.get_json()) == {}  # as the OpenAPI document says
    resent = relay.post("charge.refunded", refund, "evt_nobody")
    assert resent.status_code == 200 and resent.get_json()["status"] == "duplicate"
    relay.work()
    assert [r for r in sandbox.state.requests if r["path"].startswith("/api/")] == []
    listed = relay.client.get("/admin/dlq?reason=unresolved_identity", headers=AUTH).get_json()
    assert [item["event_id"] for item in listed["items"]] == ["evt_nobody"]
    assert relay.ledger_balances() and relay.ctx.store.ledger()["dead_lettered"] == 1
