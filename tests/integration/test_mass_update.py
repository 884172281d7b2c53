"""Mass update of a standard attribute: used if, and only if, it makes fewer User.com calls than
one per user (shared/seeds/usercom_mass_update_standard_attributes.txt), against the sandbox."""

from __future__ import annotations

from service.destinations.usercom.client import UsercomClient
from service.destinations.usercom.mass_update import Pending, plan, send_burst
from service.devtools.usercom_sandbox import SandboxServer
from tests.conftest import USERCOM_KEY


def client(sandbox: SandboxServer) -> UsercomClient:
    return UsercomClient(base_url=sandbox.base_url, api_key=USERCOM_KEY, connect_timeout=3, read_timeout=10)


def known_users(sandbox: SandboxServer, count: int) -> list[tuple[str, int]]:
    ids = [f"user-{n}" for n in range(count)]
    sandbox.state.seed(ids)
    return [(user_id, sandbox.state.user_by_custom_id(user_id)["id"]) for user_id in ids]  # type: ignore[index]


def calls(sandbox: SandboxServer) -> list[str]:
    return [r["method"] + " " + r["path"] for r in sandbox.state.requests if r["path"].startswith("/api/public/")]


def test_many_users_with_the_same_value_go_in_one_mass_call(sandbox: SandboxServer) -> None:
    users = known_users(sandbox, 40)
    burst = [Pending(user_id, usercom_id, {"country": "Poland"}) for user_id, usercom_id in users]
    chosen = send_burst(client(sandbox), burst)
    assert chosen.calls == 1 and calls(sandbox) == ["PUT /api/public/users/mass_update_standard_attributes/"]
    assert all(sandbox.state.user_by_custom_id(u)["country"] == "Poland" for u, _ in users)  # type: ignore[index]


def test_distinct_values_keep_one_call_per_user(sandbox: SandboxServer) -> None:
    users = known_users(sandbox, 5)
    burst = [
        Pending(user_id, usercom_id, {"country": "Poland", "email": f"{user_id}@example.com"})
        for user_id, usercom_id in users
    ]
    chosen = send_burst(client(sandbox), burst)
    assert chosen.mass == [] and chosen.calls == 5
    assert not any("mass_update" in call for call in calls(sandbox)) and len(calls(sandbox)) == 5
    assert sandbox.state.user_by_custom_id("user-3")["email"] == "user-3@example.com"  # type: ignore[index]


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
