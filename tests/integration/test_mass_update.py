"""Mass update of a standard attribute: used for users delivered together if, and only if, it makes
fewer User.com calls than one per user (shared/seeds/usercom_mass_update_standard_attributes.txt),
against the sandbox."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from redis import Redis

import workers.delivery.group
from service.config import Settings
from service.core.update import UserUpdate
from service.destinations.usercom.mass_update import Pending, plan
from service.devtools.usercom_sandbox import Fault, SandboxServer
from service.store import keys
from service.store.trace import read_trace
from tests.conftest import an_update
from tests.integration.test_group import take_all
from workers.delivery.context import DeliveryContext, calls_until, configure
from workers.delivery.group import deliver_group
from workers.runner import build_context


@pytest.fixture
def ctx(settings: Settings, redis: Redis, sandbox: SandboxServer) -> Iterator[DeliveryContext]:
    context = build_context(settings, "usercom")
    configure(context)
    yield context
    context.redis.close()


def known_users(ctx: DeliveryContext, sandbox: SandboxServer, count: int) -> list[str]:
    """Users User.com has, whose User.com ids the relay learned (as from earlier answers)."""
    users = [f"user-{n}" for n in range(count)]
    sandbox.state.seed(users)
    for user in users:
        ctx.redis.set(keys.usercom_id(user), sandbox.state.user_by_custom_id(user)["id"])  # type: ignore[index]
    return users


def calls(sandbox: SandboxServer) -> list[str]:
    return [r["method"] + " " + r["path"] for r in sandbox.state.requests if r["path"].startswith("/api/public/")]


def deliver_together(ctx: DeliveryContext, updates: list[UserUpdate]) -> list[str]:
    for update in updates:
        assert ctx.store.accept(update)
    return deliver_group(ctx, take_all(ctx))


def only_standard(n: int, user: str, standard: dict[str, str]) -> UserUpdate:
    return an_update(f"evt_{n}", user_id=user, standard=standard, custom={}, tags=[])


def test_users_getting_the_same_value_are_updated_by_one_mass_call(
    ctx: DeliveryContext, sandbox: SandboxServer
) -> None:
    users = known_users(ctx, sandbox, 6)
    outcomes = deliver_together(ctx, [only_standard(n, u, {"country": "Poland"}) for n, u in enumerate(users)])
    assert outcomes == ["delivered"] * 6
    assert calls(sandbox) == ["PUT /api/public/users/mass_update_standard_attributes/"]
    assert all(sandbox.state.user_by_custom_id(u)["country"] == "Poland" for u in users)  # type: ignore[index]
    ledger = ctx.store.ledger()
    assert (ledger["delivered"], ledger["in_flight"]) == (6, 0)
    assert ctx.redis.zcard(keys.USERCOM.limiter_in_flight) == 0
    entry = read_trace(ctx.redis, keys.USERCOM, "user-3")[0]
    assert entry["endpoint"] == "PUT /users/mass_update_standard_attributes/"


def test_no_mass_call_is_made_on_leases_that_may_have_lapsed(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    """The worker is paused (as by SIGSTOP) right after taking the users, for longer than their leases are
    known to run: neither the mass call nor their own is made; they are put back for the next job."""
    users = known_users(ctx, sandbox, 6)
    reads = iter([0.0])  # the first read of the clock (when the leases are taken) comes before the pause
    ctx.ordering.renewer.clock = lambda: time.monotonic() + next(reads, 10.0)
    ctx.ordering.renewer.interval = 3600  # no renewal in between: it would find the leases still ours
    outcomes = deliver_together(ctx, [only_standard(n, u, {"country": "Poland"}) for n, u in enumerate(users)])
    assert outcomes == ["user_busy"] * 6
    assert calls(sandbox) == []
    assert ctx.store.ledger()["in_flight"] == 6


def test_no_mass_call_is_made_that_could_outlast_its_job(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    users = known_users(ctx, sandbox, 6)
    with calls_until(time.monotonic() + 12):  # the calls' timeouts: 3 + 10 s
        outcomes = deliver_together(ctx, [only_standard(n, u, {"country": "Poland"}) for n, u in enumerate(users)])
    assert outcomes == ["deferred"] * 6
    assert calls(sandbox) == []


def test_distinct_values_keep_one_call_per_user(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    users = known_users(ctx, sandbox, 5)
    updates = [only_standard(n, u, {"country": "Poland", "email": f"{u}@example.com"}) for n, u in enumerate(users)]
    assert deliver_together(ctx, updates) == ["delivered"] * 5
    assert not any("mass_update" in call for call in calls(sandbox)) and len(calls(sandbox)) == 5
    assert sandbox.state.user_by_custom_id("user-3")["email"] == "user-3@example.com"  # type: ignore[index]


def test_a_failed_mass_call_leaves_its_users_to_their_own_calls(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    users = known_users(ctx, sandbox, 4)
    sandbox.state.faults.append(Fault(500))  # the mass call
    outcomes = deliver_together(ctx, [only_standard(n, u, {"country": "Spain"}) for n, u in enumerate(users)])
    assert outcomes == ["delivered"] * 4
    assert calls(sandbox)[0] == "PUT /api/public/users/mass_update_standard_attributes/"
    assert len(calls(sandbox)) == 1 + 4
    assert all(sandbox.state.user_by_custom_id(u)["country"] == "Spain" for u in users)  # type: ignore[index]
    assert ctx.store.ledger()["delivered"] == 4


def test_the_plan_only_takes_groups_that_save_calls() -> None:
    same = [Pending(f"a{n}", n, {"country": "PL", "city": "Krakow"}) for n in range(3)]  # 2 mass calls < 3
    pair = [Pending(f"b{n}", 100 + n, {"country": "DE", "city": "Berlin"}) for n in range(2)]  # 2 calls = 2: no
    unknown = [Pending(f"c{n}", None, {"country": "PL"}) for n in range(5)]  # no User.com id: by our id
    custom = [Pending(f"d{n}", 200 + n, {"country": "PL"}, {"plan": "pro"}) for n in range(5)]
    chosen = plan(same + pair + unknown + custom)
    assert sorted((a, v) for a, v, _ in chosen.mass) == [("city", "Krakow"), ("country", "PL")]
    assert {u.user_id for u in chosen.per_user} == {u.user_id for u in pair + unknown + custom}
    assert chosen.calls == 2 + 2 + 5 + 5 < 15
    assert plan(pair).mass == [] and plan(pair).calls == 2  # no saving: one call per user


def test_a_choice_given_as_a_word_is_no_mass_value() -> None:
    """Its own call sends it as its code (gender 2); the mass endpoint's string would be the word."""
    words = [Pending(f"g{n}", n, {"gender": "male"}) for n in range(5)]
    assert plan(words).mass == [] and plan(words).calls == 5


def test_users_covered_by_a_mass_call_report_nothing_left_out(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    """Only the user whose own call left a value out reports it: not the users after it on the thread,
    whose update the mass call applied (review finding: they repeated its dropped email)."""
    users = known_users(ctx, sandbox, 4)
    bad = only_standard(0, users[0], {"email": "not-an-email", "city": "Paris"})
    covered = [only_standard(n, u, {"country": "USA"}) for n, u in enumerate(users[1:], 1)]
    assert deliver_together(ctx, [bad, *covered]) == ["delivered"] * 4
    assert "PUT /api/public/users/mass_update_standard_attributes/" in calls(sandbox)
    [own] = read_trace(ctx.redis, keys.USERCOM, users[0])
    assert own["dropped"] == [{"name": "email", "reason": "invalid_email", "event_id": "evt_0"}]
    for user in users[1:]:
        [entry] = read_trace(ctx.redis, keys.USERCOM, user)
        assert entry["dropped"] == [], user


def test_mass_calls_count_in_the_groups_time(
    ctx: DeliveryContext, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mass call that takes the group's time leaves the next one unmade: its users are put back."""
    monkeypatch.setattr(workers.delivery.group, "GROUP_SEND_SECONDS", 0.3)
    users = known_users(ctx, sandbox, 4)
    sandbox.state.faults.append(Fault(500, delay=0.6))  # the first mass call fails, late
    updates = [only_standard(n, u, {"country": "PL", "city": "Krakow"}) for n, u in enumerate(users)]
    assert deliver_together(ctx, updates) == ["deferred"] * 4
    assert calls(sandbox) == ["PUT /api/public/users/mass_update_standard_attributes/"]
    assert ctx.store.ledger()["in_flight"] == 4 and ctx.store.dead_letters() == []


def test_users_a_mass_call_covered_are_not_put_back_for_the_groups_time(
    ctx: DeliveryContext, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers.delivery.group, "GROUP_SEND_SECONDS", 0.3)
    users = known_users(ctx, sandbox, 4)
    own = only_standard(0, users[0], {"city": "Paris"})
    covered = [only_standard(n, u, {"country": "USA"}) for n, u in enumerate(users[1:], 1)]
    sandbox.state.faults.extend([Fault(0), Fault(0, delay=0.6)])  # the mass call, then user 0's own, late
    assert deliver_together(ctx, [own, *covered]) == ["delivered"] * 4
    assert ctx.store.ledger()["in_flight"] == 0
