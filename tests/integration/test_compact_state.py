"""A user's pending state keeps each event in a compact `e:` entry (base-36 times, the type as a code), and a
state queued by the release before (entries "<accepted>|<event time>|<type>") is still delivered, its refused
value dead-lettered with exactly the event that carried it."""

from __future__ import annotations

import time

import pytest
import yaml
from redis import Redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from service.core.update import UserUpdate
from service.devtools.usercom_sandbox import SandboxServer
from service.store import keys
from service.store.ledger_counts import Settled
from service.store.ledger_state import EVENT_TYPES, Event, decode, event_of, event_value
from service.store.ledger_user import EventOutcome, SettleUser
from tests.conftest import REPO, an_update
from tests.integration.test_store import _store
from workers.delivery.context import DeliveryContext

NOW = 1_795_991_243.7


@pytest.mark.parametrize(
    ("event_type", "event_time", "legacy"),
    [
        ("customer.subscription.updated", 1_795_991_240, False),  # live: a few seconds old
        ("invoice.paid", 1_600_000_000, True),  # a replay keeps its old event time
        ("some.new.type", 1_795_991_250, False),  # not in the table: verbatim; event time after acceptance
        ("#odd,type|with|marks", 0, False),
    ],
)
def test_an_event_entry_reads_back_as_written(event_type: str, event_time: int, legacy: bool) -> None:
    update = an_update("evt_x", event_type=event_type, event_time=event_time)
    value = event_value(update, NOW, legacy=legacy)
    assert event_of("evt_x", value) == Event("evt_x", float(int(NOW)), event_time, event_type, legacy)


def test_an_entry_costs_a_third_of_what_it_did() -> None:
    value = event_value(an_update(event_type="customer.subscription.updated", event_time=int(NOW) - 2), NOW)
    assert len(value) <= 12 < len(f"{int(NOW)}|{int(NOW) - 2}|customer.subscription.updated") // 3
    assert EVENT_TYPES[:3] == ("customer.created", "customer.updated", "customer.deleted")  # append only


def test_entries_of_the_previous_format_read_back() -> None:
    state = decode({b"e:evt_1": b"1795991243|1700000000|invoice.paid", b"e:evt_2": b"1795991244|17|a,b|L"})
    assert state.events == {
        "evt_1": Event("evt_1", 1795991243.0, 1_700_000_000, "invoice.paid", False),
        "evt_2": Event("evt_2", 1795991244.0, 17, "a,b", True),
    }


def _to_previous_format(redis: Redis, state: str, updates: list[UserUpdate]) -> None:
    """Rewrite the state's event entries as the release before wrote them."""
    for update in updates:
        field = f"e:{update.event_id}"
        accepted = event_of(update.event_id, redis.hget(state, field).decode()).accepted_at  # type: ignore[union-attr]
        redis.hset(state, field, f"{int(accepted)}|{update.event_time}|{update.event_type}")


@pytest.mark.parametrize("previous_format", [True, False])
def test_a_queued_state_is_delivered_and_a_refused_value_dead_lettered_with_its_event(
    ctx: DeliveryContext, redis: Redis, sandbox: SandboxServer, previous_format: bool
) -> None:
    refused = an_update(
        "evt_refused",
        event_type="customer.subscription.updated",
        event_time=1_700_000_100,
        standard={"company_id": "co_missing"},
    )
    kept = an_update("evt_kept", event_type="vendor.thing.changed", event_time=1_700_000_200, custom={"plan": "team"})
    assert ctx.store.accept(refused) and ctx.store.accept(kept)
    state = ctx.store.keys.user_state("stripe", "user:u1")
    if previous_format:
        _to_previous_format(redis, state, [refused, kept])
        assert redis.hget(state, "e:evt_kept").endswith(b"|1700000200|vendor.thing.changed")  # type: ignore[union-attr]
    SimpleWorker([ctx.queues[keys.LIVE]], connection=ctx.redis, serializer=JSONSerializer).work(burst=True)
    assert sandbox.state.user_by_custom_id("u1")["attributes"]["plan"] == "team"  # type: ignore[index]
    [item] = ctx.store.dead_letters()
    assert item["event_id"] == "evt_refused" and item["reason"] == "usercom_rejected"
    assert (item["event_type"], item["event_time"]) == ("customer.subscription.updated", 1_700_000_100)
    assert UserUpdate.from_dict(item["update"]).standard == {"company_id": "co_missing"}
    assert UserUpdate.from_dict(item["update"]).custom == {}
    ledger = ctx.store.ledger()
    assert (ledger["received"], ledger["delivered"], ledger["dead_lettered"], ledger["in_flight"]) == (2, 1, 1, 0)
    assert not redis.exists(state) and not redis.exists(ctx.store.keys.in_hand("stripe", "user:u1"))


@pytest.mark.parametrize("written", ["compact", "compact, per-event job", "previous", "previous, per-event job"])
def test_settling_reads_when_each_event_was_accepted(redis: Redis, written: str) -> None:
    store = _store(redis)
    update = an_update("evt_1", event_type="invoice.paid", event_time=1_700_000_000)
    started = int(time.time())
    assert store.accept(update)
    state, in_hand = store.keys.user_state("stripe", "user:u1"), store.keys.in_hand("stripe", "user:u1")
    legacy = "per-event job" in written
    value = event_value(update, started, legacy=legacy)
    if written.startswith("previous"):
        value = f"{started}|1700000000|invoice.paid" + ("|L" if legacy else "")
    redis.hset(state, "e:evt_1", value)
    redis.rename(state, in_hand)  # what a delivery job's take does
    [settled] = store.settle_user(SettleUser("stripe", "user:u1", [EventOutcome("evt_1", "delivered")])) or []
    assert settled == Settled(True, float(started))
    assert bool(redis.exists(store.keys.outcome("stripe", "evt_1"))) == legacy  # a per-event job's outcome key
    assert store.ledger()["delivered"] == 1 and not redis.exists(in_hand)


def test_the_deployed_redis_keeps_a_state_with_long_values_a_listpack(redis: Redis) -> None:
    conf = yaml.safe_load((REPO / "deploy" / "redis" / "redis.yaml").read_text().split("\n---\n")[0])
    lines = dict(line.split(None, 1) for line in conf["data"]["redis.conf"].splitlines() if line and line[0] != "#")
    store = _store(redis)
    state = store.keys.user_state("stripe", "user:u1")
    default = redis.config_get("hash-max-ziplist-value")["hash-max-ziplist-value"]
    try:
        for limit in (None, lines["hash-max-listpack-value"]):  # the embedded Redis (6.2) names it ziplist
            redis.delete(state)
            if limit:
                redis.config_set("hash-max-ziplist-value", limit)
            for n in range(20):  # Stripe-length ids, a long email: each attribute value is over 64 bytes
                email = {"email": "firstname.lastname@company-name.example"}
                assert store.accept(an_update(f"evt_1NG8Du2eZvKYlo2C{limit}{n:07d}", user_id="u1", standard=email))
            assert redis.object("encoding", state) in ((b"ziplist", b"listpack") if limit else (b"hashtable",))
    finally:
        redis.config_set("hash-max-ziplist-value", default)  # the server is shared by the session's tests
