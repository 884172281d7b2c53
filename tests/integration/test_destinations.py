"""Fan-out to several destinations: User.com and UserKit, each with its own queue, ledger,
dead-letter queue and rate limiter, against a real Redis and both API doubles."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from service import create_app
from service.config import Settings
from service.core.update import UserUpdate
from service.destinations.userkit.client import explain, userkit_body, whole_name
from service.devtools.usercom_sandbox import SandboxServer
from service.devtools.userkit_sandbox import UserKitServer
from service.store import keys
from service.store.ledger import Store
from service.store.trace import read_trace
from tests.conftest import an_update, read, stripe_event
from workers.delivery.context import DeliveryContext, configure
from workers.runner import build_context

USERKIT_SECRET = "uk_test_app_secret_0123456789"
ADMIN = "destinations-admin-token"
T = 1_700_000_000
PERSON = {"email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace", "phone_number": "+15552323353"}


@pytest.fixture
def userkit() -> Iterator[UserKitServer]:
    server = UserKitServer(app_secret=USERKIT_SECRET).start()
    server.state.seed(["u1"])
    yield server
    server.stop()


@pytest.fixture
def both(env: dict[str, str], userkit: UserKitServer) -> Settings:
    return Settings.from_env(
        {
            **env,
            "RELAY_DESTINATIONS": "usercom,userkit",
            "USERKIT_API_URL": userkit.base_url,
            "USERKIT_APP_SECRET": USERKIT_SECRET,
            "USERKIT_RATE_LIMIT": "1000",
            "USERKIT_BURST": "100",
            "RELAY_ADMIN_TOKEN": ADMIN,
        }
    )


def drain(settings: Settings, destination: str) -> DeliveryContext:
    """Run the destination's live queue empty with a real rq worker, as its worker process would."""
    ctx = build_context(settings, destination)
    configure(ctx)
    SimpleWorker([ctx.queues[keys.LIVE]], connection=ctx.redis, serializer=JSONSerializer).work(burst=True)
    return ctx


def person(event_id: str = "evt_1", **fields: Any) -> UserUpdate:
    return an_update(event_id, standard=PERSON, tags=["subscriber"], **fields)


def ledgers(redis: Redis, settings: Settings) -> dict[str, dict[str, int]]:
    store = Store.from_settings(redis, settings)
    return {name: store.for_destination(name).ledger() for name in settings.destinations}


def test_each_event_reaches_every_destination_once(
    both: Settings, redis: Redis, sandbox: SandboxServer, userkit: UserKitServer
) -> None:
    store = Store.from_settings(redis, both)
    assert store.accept(person())
    assert not store.accept(person())  # a duplicate is a duplicate for every destination
    assert redis.llen(keys.Keys("usercom").rq_queue_key(keys.LIVE)) == 1
    assert redis.llen(keys.Keys("userkit").rq_queue_key(keys.LIVE)) == 1
    drain(both, "usercom")
    drain(both, "userkit")
    usercom_user = sandbox.state.user_by_custom_id("u1")
    assert usercom_user is not None and usercom_user["email"] == "ada@example.com"
    [call] = userkit.state.requests
    assert call["body"] == {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+15552323353"}
    assert call["auth"] == "Basic " + base64.b64encode(f"api:{USERKIT_SECRET}".encode()).decode()
    assert userkit.state.users["u1"]["name"] == "Ada Lovelace"
    for ledger in ledgers(redis, both).values():
        assert (ledger["received"], ledger["delivered"], ledger["duplicates"], ledger["in_flight"]) == (1, 1, 1, 0)


def test_a_failure_at_one_destination_never_blocks_or_duplicates_the_other(
    both: Settings, redis: Redis, sandbox: SandboxServer, userkit: UserKitServer
) -> None:
    store = Store.from_settings(redis, both)
    assert store.accept(person("evt_1", user_id="u9"))  # UserKit has no user u9: it refuses
    drain(both, "userkit")
    userkit.state.faults.append((429, "30"))
    assert store.accept(person("evt_2"))  # UserKit throttles this one
    drain(both, "userkit")
    drain(both, "usercom")
    puts = [r for r in sandbox.state.requests if r["method"] == "PUT" and r.get("status") == 200]
    assert len(puts) == 2  # User.com got both, once each, while UserKit refused one and throttled the other
    counts = ledgers(redis, both)
    assert (counts["usercom"]["delivered"], counts["usercom"]["in_flight"]) == (2, 0)
    assert (counts["userkit"]["dead_lettered"], counts["userkit"]["in_flight"]) == (1, 1)
    [item] = store.for_destination("userkit").dead_letters()
    assert item["destination"] == "userkit" and item["reason"] == "userkit_rejected"
    assert item["last_status"] == 404
    assert "user_not_found (user_id): No user with id u9" in item["message"]
    assert store.for_destination("usercom").dead_letters() == []
    status = create_app(both).test_client().get("/status").get_json()["destinations"]
    assert status["userkit"]["limiter"]["paused_until"] is not None  # UserKit's 429 pauses UserKit only
    assert status["usercom"]["limiter"]["paused_until"] is None


def test_an_update_with_nothing_for_userkit_is_ignored_there(
    both: Settings, redis: Redis, sandbox: SandboxServer, userkit: UserKitServer
) -> None:
    assert Store.from_settings(redis, both).accept(an_update(custom={"plan": "pro"}, tags=["paying"]))
    drain(both, "userkit")
    drain(both, "usercom")
    assert userkit.state.requests == []
    counts = ledgers(redis, both)
    assert (counts["userkit"]["ignored"], counts["userkit"]["in_flight"]) == (1, 0)
    assert counts["usercom"]["delivered"] == 1


def test_replaying_from_one_destinations_dlq_delivers_there_only(
    both: Settings, redis: Redis, sandbox: SandboxServer, userkit: UserKitServer
) -> None:
    assert Store.from_settings(redis, both).accept(person("evt_1", user_id="u9"))
    drain(both, "userkit")
    drain(both, "usercom")
    admin = create_app(both).test_client()
    auth = {"Authorization": f"Bearer {ADMIN}"}
    assert admin.get("/admin/dlq", headers=auth).get_json()["total"] == 0  # default: the first, User.com
    page = admin.get("/admin/dlq?destination=userkit", headers=auth).get_json()
    assert [i["id"] for i in page["items"]] == ["stripe-evt_1"]
    bad = admin.get("/admin/dlq?destination=hubspot", headers=auth)
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "invalid_request"
    userkit.state.seed(["u9"])  # the operator fixes the cause, then replays
    answer = admin.post("/admin/dlq/stripe-evt_1/replay?destination=userkit", headers=auth)
    assert answer.status_code == 202, answer.get_json()
    ctx = build_context(both, "userkit")
    configure(ctx)
    SimpleWorker([ctx.queues[keys.REPLAY]], connection=ctx.redis, serializer=JSONSerializer).work(burst=True)
    assert userkit.state.users["u9"]["email"] == "ada@example.com"
    puts = [r for r in sandbox.state.requests if r["method"] == "PUT" and r.get("status") == 200]
    assert len(puts) == 1  # User.com is not sent it again
    counts = ledgers(redis, both)
    assert (counts["userkit"]["delivered"], counts["userkit"]["replayed"], counts["userkit"]["in_flight"]) == (1, 1, 0)


def test_userkit_body_and_error_explanations() -> None:
    expected = {"name": "Ada", "email": "a@b.co"}
    assert userkit_body({"first_name": "Ada", "email": "a@b.co", "city": "London"}) == expected
    assert userkit_body({"country": "PL"}) == {}
    body = (
        '{"error": {"type": "invalid_request_error", "code": "invalid_username", "param": "username",'
        ' "message": "Invalid username"}, "errors": [{"code": "invalid_username", "param": "username",'
        ' "message": "Invalid username"}, {"code": "invalid_email", "param": "email", "message": "Invalid email"}]}'
    )
    assert explain(body) == "invalid_username (username): Invalid username; invalid_email (email): Invalid email"
    assert explain("<html>bad gateway</html>") == "<html>bad gateway</html>"


def test_userkit_keeps_the_whole_name_when_an_update_names_one_part(
    both: Settings, redis: Redis, userkit: UserKitServer
) -> None:
    """UserKit keeps one full name: a later update of the last name alone must not leave just "King"."""
    store = Store.from_settings(redis, both)
    assert store.accept(person())
    drain(both, "userkit")
    assert store.accept(an_update("evt_2", event_time=1_700_000_100, standard={"last_name": "King"}, custom={}))
    drain(both, "userkit")
    assert [call["body"].get("name") for call in userkit.state.requests] == ["Ada Lovelace", "Ada King"]
    assert userkit.state.users["u1"]["name"] == "Ada King"
    # The trace shows what UserKit was sent: the name made whole, never custom attributes or tags.
    newest, first = read_trace(redis, keys.Keys("userkit"), "u1")
    assert (newest["attributes"], newest["tags"]) == ({"name": "Ada King"}, [])
    expected = {"name": "Ada Lovelace", "email": PERSON["email"], "phone": PERSON["phone_number"]}
    assert (first["attributes"], first["tags"]) == (expected, [])
    # Kept for good, as UserKit keeps the name: a part changed after months without a name change (an
    # annual plan) would otherwise be sent alone again.
    assert redis.ttl(keys.userkit_name("u1")) == -1
    redis.expire(keys.userkit_name("u1"), 3600)  # as the release before left every name it kept
    assert store.accept(an_update("evt_3", event_time=1_700_000_200, standard={"email": "ada@king.example"}))
    drain(both, "userkit")
    assert "name" not in userkit.state.requests[-1]["body"]  # an update naming no part sends no name
    assert userkit.state.users["u1"]["name"] == "Ada King"
    assert redis.ttl(keys.userkit_name("u1")) == -1  # kept for good from the user's next delivery on
    redis.expire(keys.userkit_name("u1"), 3600)
    assert store.accept(an_update("evt_paid", event_time=1_700_000_250, standard={}, tags=["paying"]))
    drain(both, "userkit")  # nothing UserKit keeps (ignored there): the memory is kept for good all the same
    assert redis.ttl(keys.userkit_name("u1")) == -1
    cleared = an_update("evt_4", event_time=1_700_000_300, standard={"first_name": None}, custom={}, tags=[])
    assert store.accept(cleared)
    drain(both, "userkit")
    assert userkit.state.users["u1"]["name"] == "King"  # a part cleared alone is gone from the whole name


def test_whole_name_completes_a_part_from_what_was_sent_before() -> None:
    first = whole_name({"first_name": "Ada", "last_name": "Lovelace"}, None)
    assert first == ({"first_name": "Ada", "last_name": "Lovelace"}, '{"first_name": "Ada", "last_name": "Lovelace"}')
    later = whole_name({"last_name": "King"}, first[1])
    assert later == ({"first_name": "Ada", "last_name": "King"}, '{"first_name": "Ada", "last_name": "King"}')
    assert whole_name({"email": "a@b.co"}, first[1]) == ({"email": "a@b.co"}, None)  # no part named: as it was
    assert whole_name({"last_name": "Lovelace"}, first[1])[1] is None  # nothing new to remember
    assert whole_name({"first_name": None}, '{"first_name": "Ada"}') == ({"first_name": None}, "")  # cleared
    for unreadable in ("not json", "[1, 2]"):  # what was kept cannot be read: this update's parts alone
        assert whole_name({"last_name": "King"}, unreadable) == ({"last_name": "King"}, '{"last_name": "King"}')


def test_a_rename_to_one_word_clears_the_last_name_at_both_destinations(
    both: Settings, redis: Redis, sandbox: SandboxServer, userkit: UserKitServer
) -> None:
    """Stripe's `name` is whole: "Grace" after "Ada Lovelace" has no last name. It was left unknown, so
    User.com kept "Lovelace" and UserKit was sent "Grace Lovelace", a name made whole from its memory."""
    store = Store.from_settings(redis, both)
    sandbox.state.seed(["u1"])
    for n, name in enumerate(["Ada Lovelace", "Grace"]):
        customer = {"id": "cus_1", "email": "ada@example.com", "name": name, "metadata": {"user_id": "u1"}}
        update = read("stripe", stripe_event("customer.updated", customer, event_id=f"evt_{n}", created=T + n)).update
        assert update is not None and store.accept(update)
        drain(both, "usercom")
        drain(both, "userkit")
    assert [call["body"].get("name") for call in userkit.state.requests] == ["Ada Lovelace", "Grace"]
    user = sandbox.state.user_by_custom_id("u1")
    assert user is not None and (user["first_name"], user["last_name"]) == ("Grace", None)
