"""Last-writer-wins at delivery (ordering_scripts.CLAIM_LUA) orders values as intake's merge does
(ledger_state.ORDER_LUA): by event time, a tie to the greater event id. So two events of one second end
with the same value whether merged into one call or delivered apart, the lesser one never overwrites the
greater, and a last-written time recorded by the previous release (a bare number) still counts, as
workers of both releases run side by side during an upgrade."""

from __future__ import annotations

from service.core.update import UserUpdate
from service.devtools.usercom_sandbox import Fault, SandboxServer
from tests.conftest import an_update
from tests.integration.test_group import take_all
from workers.delivery.context import DeliveryContext
from workers.delivery.group import deliver_group
from workers.delivery.job import deliver_user

SECOND = 1_700_000_000


def plan(event_id: str, value: str, user_id: str = "u1", event_time: int = SECOND, **more: object) -> UserUpdate:
    fields = {"event_type": "customer.subscription.updated", "event_time": event_time, "user_id": user_id}
    return an_update(event_id, **fields, custom={"plan": value, **more})


def attributes(sandbox: SandboxServer, user_id: str = "u1") -> dict[str, object]:
    user = sandbox.state.user_by_custom_id(user_id)
    assert user is not None
    return dict(user["attributes"])


def test_two_events_of_one_second_end_the_same_merged_or_delivered_apart(
    ctx: DeliveryContext, sandbox: SandboxServer
) -> None:
    # one event id per user and letter (dedup is per event id), compared within a user: b > a
    assert ctx.store.accept(plan("merged_b", "B", "merged")) and ctx.store.accept(plan("merged_a", "A", "merged"))
    assert deliver_user(ctx, "stripe", "user:merged") == "delivered"
    for user, letters in (("b_first", "ba"), ("a_first", "ab")):
        for letter in letters:  # delivered one by one, each its own call (or none)
            assert ctx.store.accept(plan(f"{user}_{letter}", letter.upper(), user))
            deliver_user(ctx, "stripe", f"user:{user}")
    assert [attributes(sandbox, u)["plan"] for u in ("merged", "b_first", "a_first")] == ["B", "B", "B"]
    ledger = ctx.store.ledger()
    assert (ledger["delivered"], ledger["coalesced"], ledger["in_flight"]) == (4, 2, 0)


def test_a_group_delivery_keeps_the_same_order(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    # the batch path claims several users in one round trip (Ordering.claim_many), with the same script
    users = ["g0", "g1", "g2"]
    outcomes: list[str] = []
    for letter in "ba":
        for user in users:
            assert ctx.store.accept(plan(f"{user}_{letter}", letter.upper(), user))
        outcomes = deliver_group(ctx, take_all(ctx))
    assert outcomes == ["coalesced"] * len(users)
    assert [attributes(sandbox, user)["plan"] for user in users] == ["B"] * len(users)


def test_a_lesser_event_of_the_same_second_never_overwrites_a_retried_value(
    ctx: DeliveryContext, sandbox: SandboxServer
) -> None:
    sandbox.state.faults.append(Fault(503))
    assert ctx.store.accept(plan("evt_b", "B"))
    assert deliver_user(ctx, "stripe", "user:u1") == "retry_scheduled"  # claimed, the call failed
    assert deliver_user(ctx, "stripe", "user:u1", attempt=2) == "delivered"  # the same event claims again
    assert attributes(sandbox)["plan"] == "B"
    assert ctx.store.accept(plan("evt_a", "A"))
    assert deliver_user(ctx, "stripe", "user:u1") == "coalesced"
    assert attributes(sandbox)["plan"] == "B"
    recorded = ctx.redis.hgetall(ctx.ordering.keys.last_written("stripe", "u1"))
    assert recorded == {b"plan": str(SECOND).encode(), b"#plan": f"{SECOND}|evt_b".encode()}


def test_a_time_recorded_by_the_previous_release_still_counts(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    # The previous release recorded a bare time per attribute: read as that time with the lowest id.
    last_written = ctx.ordering.keys.last_written("stripe", "u1")
    ctx.redis.hset(last_written, mapping={"plan": str(SECOND), "seats": str(SECOND + 1)})
    assert ctx.store.accept(plan("evt_b", "B", seats=2))
    assert deliver_user(ctx, "stripe", "user:u1") == "delivered"
    assert attributes(sandbox) == {"plan": "B"}  # seats: a newer value was sent before the upgrade
    assert ctx.store.accept(plan("evt_a", "A"))
    assert deliver_user(ctx, "stripe", "user:u1") == "coalesced"  # evt_b's claim recorded its id
    assert attributes(sandbox) == {"plan": "B"}
    assert ctx.redis.hgetall(last_written) == {
        b"plan": str(SECOND).encode(),
        b"#plan": f"{SECOND}|evt_b".encode(),
        b"seats": str(SECOND + 1).encode(),
    }


# The claim of the release before event ids were recorded (ordering_scripts.CLAIM_LUA then): during a
# rolling upgrade its workers run beside this release's, on the same hashes.
EARLIER_CLAIM = """
local fresh = {}
for i = 1, #ARGV, 2 do
    local attribute, event_time = ARGV[i], ARGV[i + 1]
    local last = tonumber(redis.call('HGET', KEYS[1], attribute) or '-1')
    if last <= tonumber(event_time) then
        redis.call('HSET', KEYS[1], attribute, event_time)
        table.insert(fresh, attribute)
    end
end
return fresh
"""


def test_workers_of_the_earlier_release_read_and_write_beside_this_one(
    ctx: DeliveryContext, sandbox: SandboxServer
) -> None:
    last_written = ctx.ordering.keys.last_written("stripe", "u1")
    earlier = ctx.redis.register_script(EARLIER_CLAIM)
    assert ctx.store.accept(plan("evt_b", "B"))
    assert deliver_user(ctx, "stripe", "user:u1") == "delivered"
    # The earlier release reads what this one wrote: an older time is refused, a newer one claimed.
    assert earlier(keys=[last_written], args=["plan", SECOND - 1]) == []
    assert earlier(keys=[last_written], args=["plan", SECOND + 5]) == [b"plan"]
    # Its newer bare time counts here (as that time, lowest id), not the pair this release recorded before.
    assert ctx.store.accept(plan("evt_c", "C", event_time=SECOND + 4))
    assert deliver_user(ctx, "stripe", "user:u1") == "coalesced"
    assert ctx.store.accept(plan("evt_a", "A", event_time=SECOND + 5))
    assert deliver_user(ctx, "stripe", "user:u1") == "delivered"
    assert attributes(sandbox) == {"plan": "A"}


def test_an_older_value_from_another_source_never_overwrites_a_newer_one(
    ctx: DeliveryContext, sandbox: SandboxServer
) -> None:
    """The user's Stripe customer and the user's own system (Standard Webhooks) set the same attribute:
    last-writer-wins compared their times only within each source, so the older one, sent last, won."""
    newer = an_update("evt_new", event_time=SECOND, standard={"email": "new@example.com"}, custom={"plan": "team"})
    older = an_update(
        "msg_old", source="standard", event_time=SECOND - 900, standard={"email": "old@example.com"}, custom={}
    )
    assert ctx.store.accept(newer)
    assert deliver_user(ctx, "stripe", "user:u1") == "delivered"
    assert ctx.store.accept(older)
    assert deliver_user(ctx, "standard", "user:u1") == "coalesced"  # nothing in it is newer
    user = sandbox.state.user_by_custom_id("u1")
    assert user is not None and user["email"] == "new@example.com"
    newest = an_update("msg_newest", source="standard", event_time=SECOND + 1, standard={"email": "b@example.com"})
    assert ctx.store.accept(newest)
    assert deliver_user(ctx, "standard", "user:u1") == "delivered"  # a newer one from either source goes out
    assert sandbox.state.user_by_custom_id("u1")["email"] == "b@example.com"  # type: ignore[index]


def test_one_delivery_per_user_whichever_source(ctx: DeliveryContext) -> None:
    """Two sources' jobs for one user at once could each send, the older value last."""
    assert ctx.store.accept(an_update("evt_1"))
    assert ctx.store.accept(an_update("msg_1", source="standard"))
    with ctx.ordering.hold("stripe", "user:u1", "u1"):
        [other] = ctx.ordering.take_many([("standard", "user:u1", "u1", None)])
        assert other is None  # busy: it waits for the Stripe delivery to end
