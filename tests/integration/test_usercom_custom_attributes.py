"""Custom attributes on the v2 update: User.com refuses one that does not exist yet (seeds), the
update by our id creates it; the relay recovers and never dead-letters for it. Against the sandbox."""

from __future__ import annotations

import urllib3

from service.devtools.usercom_sandbox import Fault, SandboxServer
from service.store import keys
from tests.conftest import an_update
from workers.delivery.context import DeliveryContext
from workers.delivery.job import deliver_update


def calls(sandbox: SandboxServer) -> list[tuple[str, str, int]]:
    return [(r["method"], r["path"].removeprefix("/api/public"), r["status"]) for r in sandbox.state.requests]


def deliver(ctx: DeliveryContext, event_id: str, user_id: str, **custom: object) -> str:
    item = an_update(event_id, user_id=user_id, custom=custom)
    assert ctx.store.accept(item)
    return deliver_update(ctx, item)


def test_the_sandbox_follows_the_seeds_on_custom_attributes(sandbox: SandboxServer) -> None:
    sandbox.state.seed(["u1"])
    usercom_id = sandbox.state.user_by_custom_id("u1")["id"]  # type: ignore[index]
    headers = {"Authorization": f"Token {sandbox.state.api_key}", "Content-Type": "application/json"}
    v2 = {**headers, "Accept": "*/*; version=2"}
    refused = urllib3.request("PUT", f"{sandbox.base_url}/users/{usercom_id}/", json={"seats": 3}, headers=v2)
    assert refused.status == 400 and "seats" in refused.json() and "does not exist" in refused.json()["seats"][0]
    by_our_id = urllib3.request("PUT", f"{sandbox.base_url}/users-by-id/u1/", json={"seats": 3}, headers=headers)
    assert by_our_id.status == 200  # "if specified custom attribute doesn't exist yet it will be created"
    again = urllib3.request("PUT", f"{sandbox.base_url}/users/{usercom_id}/", json={"seats": 4}, headers=v2)
    assert again.status == 200


def test_a_refused_new_attribute_goes_by_our_id_and_is_never_dead_lettered(
    ctx: DeliveryContext, sandbox: SandboxServer
) -> None:
    sandbox.state.seed(["u1"])
    usercom_id = sandbox.state.user_by_custom_id("u1")["id"]  # type: ignore[index]
    ctx.redis.set(keys.usercom_id("u1"), usercom_id)  # known: the relay goes straight to v2
    assert deliver(ctx, "evt_1", "u1", seats=3) == "delivered"
    assert calls(sandbox) == [("PUT", f"/users/{usercom_id}/", 400), ("PUT", "/users-by-id/u1/", 200)]
    assert sandbox.state.user_by_custom_id("u1")["attributes"] == {"seats": 3}  # type: ignore[index]
    assert "seats" in sandbox.state.custom_attributes  # created by the update by our id
    assert ctx.store.dead_letters() == [] and ctx.store.ledger()["delivered"] == 1


def test_a_400_in_other_words_goes_by_our_id_too_and_a_real_refusal_stays_one(
    ctx: DeliveryContext, sandbox: SandboxServer
) -> None:
    """No error body is documented for an attribute not created yet: a 400 that names no standard
    field (here `{"detail": ...}`) is tried by our id, which creates custom attributes."""
    sandbox.state.seed(["u1"])
    usercom_id = sandbox.state.user_by_custom_id("u1")["id"]  # type: ignore[index]
    ctx.redis.set(keys.usercom_id("u1"), usercom_id)
    sandbox.state.faults.append(Fault(400))  # {"detail": "Injected failure 400."}
    assert deliver(ctx, "evt_1", "u1", seats=3) == "delivered"
    assert calls(sandbox) == [("PUT", f"/users/{usercom_id}/", 400), ("PUT", "/users-by-id/u1/", 200)]
    assert sandbox.state.user_by_custom_id("u1")["attributes"] == {"seats": 3}  # type: ignore[index]
    sandbox.state.requests.clear()
    refused = an_update("evt_2", user_id="u1", standard={"company_id": "co_missing"}, custom={"seats": 4})
    assert ctx.store.accept(refused)
    assert deliver_update(ctx, refused) == "dead_lettered"  # names a standard field: no call by our id
    assert calls(sandbox) == [("PUT", f"/users/{usercom_id}/", 400)]


def test_once_created_the_attribute_goes_by_v2_for_everyone(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    sandbox.state.seed(["u1", "u2"])
    for user_id in ("u1", "u2"):
        ctx.redis.set(keys.usercom_id(user_id), sandbox.state.user_by_custom_id(user_id)["id"])  # type: ignore[index]
    assert deliver(ctx, "evt_1", "u1", seats=3) == "delivered"
    sandbox.state.requests.clear()
    assert deliver(ctx, "evt_2", "u2", seats=5) == "delivered"
    u2 = sandbox.state.user_by_custom_id("u2")
    assert calls(sandbox) == [("PUT", f"/users/{u2['id']}/", 200)]  # type: ignore[index]
    assert u2["attributes"] == {"seats": 5}  # type: ignore[index]


def test_a_new_user_gets_its_new_attribute_too(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    assert deliver(ctx, "evt_1", "fresh", seats=2) == "delivered"
    assert sandbox.state.user_by_custom_id("fresh")["attributes"] == {"seats": 2}  # type: ignore[index]
    assert ctx.store.dead_letters() == []


def test_unreachable_by_our_id_the_rest_goes_out_and_the_attribute_is_reported(
    ctx: DeliveryContext, sandbox: SandboxServer
) -> None:
    # A user id with "/" is never found by PUT /users-by-id/: the attribute cannot be created
    # through this user, so it is left out (reported), the rest delivered, nothing dead-lettered.
    sandbox.state.custom_attributes.add("plan")
    item = an_update("evt_1", user_id="team/42", custom={"plan": "pro", "seats": 4})
    assert ctx.store.accept(item)
    assert deliver_update(ctx, item) == "delivered"
    user = sandbox.state.user_by_custom_id("team/42")
    assert user is not None and user["attributes"] == {"plan": "pro"}
    assert [(v.attribute, v.reason) for v in ctx.client.last_dropped] == [  # type: ignore[attr-defined]
        ("seats", "custom_attribute_missing")
    ]
    assert ctx.store.dead_letters() == [] and ctx.store.ledger()["delivered"] == 1


def test_an_attribute_known_to_be_missing_goes_by_our_id_first(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    # Remembered from a refusal that could not be recovered through its user: the next update carrying
    # it goes by our id straight away (no v2 call doomed to a 400), and that creates it.
    assert deliver(ctx, "evt_1", "team/42", seats=4) == "delivered"
    sandbox.state.seed(["u1"])
    usercom_id = sandbox.state.user_by_custom_id("u1")["id"]  # type: ignore[index]
    ctx.redis.set(keys.usercom_id("u1"), usercom_id)
    sandbox.state.requests.clear()
    assert deliver(ctx, "evt_2", "u1", seats=5) == "delivered"
    assert calls(sandbox) == [("PUT", "/users-by-id/u1/", 200)]
    sandbox.state.requests.clear()
    assert deliver(ctx, "evt_3", "team/42", seats=6) == "delivered"  # it exists now: v2 takes it
    assert sandbox.state.user_by_custom_id("team/42")["attributes"] == {"seats": 6}  # type: ignore[index]


def by_our_id(sandbox: SandboxServer) -> list[str]:
    return [r["raw_path"] for r in sandbox.state.requests if "/users-by-id/" in r["raw_path"]]


def test_a_stale_usercom_id_of_a_user_unreachable_by_our_id_asks_by_our_id_once(
    ctx: DeliveryContext, sandbox: SandboxServer
) -> None:
    # "seats" is known to be missing, so the update goes by our id first; the User.com id remembered is
    # stale (merged away) and our id has "/", which User.com cannot route: a 404 by our id stands for
    # the whole send, whatever else is tried, and "seats" is reported left out once.
    assert deliver(ctx, "evt_0", "team/42", seats=4) == "delivered"  # learns that "seats" is missing
    sandbox.state.custom_attributes.add("plan")
    sandbox.state.seed(["team/7"])
    usercom_id = sandbox.state.user_by_custom_id("team/7")["id"]  # type: ignore[index]
    ctx.redis.set(keys.usercom_id("team/7"), 999999)
    sandbox.state.requests.clear()
    assert deliver(ctx, "evt_1", "team/7", seats=5, plan="pro") == "delivered"
    assert by_our_id(sandbox) == ["/api/public/users-by-id/team%2F7/"]
    assert calls(sandbox) == [
        ("PUT", "/users-by-id/team/7/", 404),
        ("PUT", "/users/999999/", 404),
        ("POST", "/users/update_or_create/", 200),  # it exists: the 404 by our id was the "/"
        ("PUT", f"/users/{usercom_id}/", 200),
    ]
    assert [(v.attribute, v.reason) for v in ctx.client.last_dropped] == [  # type: ignore[attr-defined]
        ("seats", "custom_attribute_missing")
    ]
    assert sandbox.state.user_by_custom_id("team/7")["attributes"] == {"plan": "pro"}  # type: ignore[index]
    assert ctx.redis.get(keys.usercom_id("team/7")) == str(usercom_id).encode()
    assert ctx.store.dead_letters() == []


def test_a_stale_usercom_id_of_a_deleted_user_creates_it_and_its_attribute_without_a_false_report(
    ctx: DeliveryContext, sandbox: SandboxServer
) -> None:
    # Deleted in User.com: not found by our id either until update_or_create makes it again; then by our
    # id it is found, and that creates "seats". Nothing was left out: nothing is reported.
    assert deliver(ctx, "evt_0", "team/42", seats=4) == "delivered"  # learns that "seats" is missing
    ctx.redis.set(keys.usercom_id("u5"), 999999)
    sandbox.state.requests.clear()
    assert deliver(ctx, "evt_1", "u5", seats=5) == "delivered"
    user = sandbox.state.user_by_custom_id("u5")
    assert user is not None and user["attributes"] == {"seats": 5}
    assert calls(sandbox) == [
        ("PUT", "/users-by-id/u5/", 404),
        ("PUT", "/users/999999/", 404),
        ("POST", "/users/update_or_create/", 201),
        ("PUT", "/users-by-id/u5/", 200),  # created since the 404: asked again
    ]
    assert ctx.client.last_dropped == []  # type: ignore[attr-defined]
