"""The User.com sandbox behaves as the seeds document, over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3

from service.devtools.usercom_sandbox import SandboxServer
from tests.conftest import USERCOM_KEY

AUTH = {"Authorization": f"Token {USERCOM_KEY}", "Content-Type": "application/json"}


@pytest.fixture
def http() -> Iterator[urllib3.PoolManager]:
    pool = urllib3.PoolManager(retries=False, timeout=5)
    yield pool
    pool.clear()


def call(
    http: urllib3.PoolManager,
    sandbox: SandboxServer,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, Any]:
    data = json.dumps(body).encode() if body is not None else None
    response = http.request(method, sandbox.base_url + path, body=data, headers=AUTH if headers is None else headers)
    return response.status, response.json() if response.data else None, response.headers


def create(http: urllib3.PoolManager, sandbox: SandboxServer, user_id: str = "u1") -> int:
    status, body, _ = call(http, sandbox, "POST", "/users/update_or_create/", {"user_id": user_id, "email": "a@b.co"})
    assert status == 201 and body["created"] is True
    return int(body["id"])


def test_requires_token_auth(http: urllib3.PoolManager, sandbox: SandboxServer) -> None:
    assert call(http, sandbox, "GET", "/users-by-id/u1/", headers={})[0] == 401
    status, body, _ = call(http, sandbox, "GET", "/users-by-id/u1/", headers={"Authorization": "Token nope"})
    assert (status, body) == (401, {"detail": "Invalid token."})
    bearer = {"Authorization": f"Bearer {USERCOM_KEY}"}
    assert call(http, sandbox, "GET", "/users-by-id/u1/", headers=bearer)[0] == 401


def test_paths_must_end_with_a_slash(http: urllib3.PoolManager, sandbox: SandboxServer) -> None:
    create(http, sandbox)
    assert call(http, sandbox, "PUT", "/users-by-id/u1", {"email": "x@y.co"})[0] == 404
    assert call(http, sandbox, "PUT", "/users-by-id/u1/", {"email": "x@y.co"})[0] == 200


def test_unknown_user_is_404(http: urllib3.PoolManager, sandbox: SandboxServer) -> None:
    status, body, _ = call(http, sandbox, "PUT", "/users-by-id/ghost/", {"email": "x@y.co"})
    assert (status, body) == (404, {"detail": "Not found."})


def test_update_or_create_then_update_by_custom_id(http: urllib3.PoolManager, sandbox: SandboxServer) -> None:
    user_id = create(http, sandbox)
    again = call(http, sandbox, "POST", "/users/update_or_create/", {"user_id": "u1", "first_name": "Ada"})
    assert again[0] == 200 and again[1] == {"created": False, "id": user_id}
    status, body, _ = call(http, sandbox, "PUT", "/users-by-id/u1/", {"plan": "pro", "tags": ["a", "b"], "gender": 3})
    assert status == 200
    assert body["first_name"] == "Ada" and body["gender"] == "female"
    assert {"name": "plan", "name_std": "plan", "value": "pro"} in body["attributes"]
    call(http, sandbox, "PUT", "/users-by-id/u1/", {"tags": ["c"]})
    tags = [t["name"] for t in call(http, sandbox, "GET", "/users-by-id/u1/")[1]["tags"]]
    assert tags == ["a", "b", "c"]  # add-only


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"first_name": "x" * 41}, "first_name"),
        ({"phone_number": "0207 123 4567"}, "phone_number"),
        ({"email": "not-an-email"}, "email"),
        ({"tags": "vip"}, "tags"),
        ({"nested": {"a": 1}}, "nested"),
        ({"gender": 9}, "gender"),
        ({"company_id": "co_missing"}, "company_id"),
    ],
)
def test_invalid_values_are_400_with_field_messages(
    http: urllib3.PoolManager, sandbox: SandboxServer, body: dict[str, Any], field: str
) -> None:
    create(http, sandbox)
    status, errors, _ = call(http, sandbox, "PUT", "/users-by-id/u1/", body)
    assert status == 400 and isinstance(errors[field], list)


def test_company_id_names_a_company_of_the_account(http: urllib3.PoolManager, sandbox: SandboxServer) -> None:
    create(http, sandbox)
    assert sandbox.state.companies is not None
    sandbox.state.companies.add("co_1")
    assert call(http, sandbox, "PUT", "/users-by-id/u1/", {"company_id": "co_1"})[0] == 200
    assert sandbox.state.user_by_custom_id("u1")["company_id"] == "co_1"  # type: ignore[index]
    sandbox.state.companies = None  # as under `relay dev`, where no call creates a company: any is taken
    assert call(http, sandbox, "PUT", "/users-by-id/u1/", {"company_id": "co_any"})[0] == 200


def test_update_or_create_takes_standard_attributes_only(http: urllib3.PoolManager, sandbox: SandboxServer) -> None:
    status, errors, _ = call(http, sandbox, "POST", "/users/update_or_create/", {"user_id": "u1", "plan": "pro"})
    assert status == 400 and "plan" in errors
    assert call(http, sandbox, "POST", "/users/update_or_create/", {"email": "a@b.co"})[0] == 400


def test_json_only(http: urllib3.PoolManager, sandbox: SandboxServer) -> None:
    headers = {**AUTH, "Content-Type": "text/plain"}
    assert call(http, sandbox, "POST", "/users/update_or_create/", {"user_id": "u"}, headers)[0] == 415


def test_update_by_usercom_id_needs_version_2(http: urllib3.PoolManager, sandbox: SandboxServer) -> None:
    user_id = create(http, sandbox)
    assert call(http, sandbox, "PUT", f"/users/{user_id}/", {"email": "n@b.co"})[0] == 406
    v2 = {**AUTH, "Accept": "*/*; version=2"}
    status, body, _ = call(http, sandbox, "PUT", f"/users/{user_id}/", {"email": "n@b.co", "custom_id": "u1"}, v2)
    assert status == 200 and body["email"] == "n@b.co"
    assert call(http, sandbox, "PUT", "/users/999999/", {"email": "n@b.co"}, v2)[0] == 404


def test_mass_update_standard_attribute(http: urllib3.PoolManager, sandbox: SandboxServer) -> None:
    ids = [create(http, sandbox, "u1"), create(http, sandbox, "u2")]
    body = {"ids": ids, "attribute": "country", "value": "USA"}
    assert call(http, sandbox, "PUT", "/users/mass_update_standard_attributes/", body)[1] == {"status": "ok"}
    assert call(http, sandbox, "GET", "/users-by-id/u2/")[1]["country"] == "USA"
    bad = {"ids": ids, "attribute": "plan", "value": "x"}
    assert call(http, sandbox, "PUT", "/users/mass_update_standard_attributes/", bad)[0] == 400
    coded = {"ids": ids, "attribute": "gender", "value": "3"}  # "value | string": a code as text
    assert call(http, sandbox, "PUT", "/users/mass_update_standard_attributes/", coded)[0] == 200
    assert call(http, sandbox, "GET", "/users-by-id/u1/")[1]["gender"] == "female"
    flag = {"ids": ids, "attribute": "unsubscribed", "value": "true"}
    assert call(http, sandbox, "PUT", "/users/mass_update_standard_attributes/", flag)[0] == 200
    untyped = {"ids": ids, "attribute": "gender", "value": 3}
    assert call(http, sandbox, "PUT", "/users/mass_update_standard_attributes/", untyped)[0] == 400
    for odd in ("²", "--5", "2.0"):  # not an integer's digits: refused, never a 500
        body = {"ids": ids, "attribute": "score", "value": odd}
        assert call(http, sandbox, "PUT", "/users/mass_update_standard_attributes/", body)[0] == 400


def test_rate_limit_answers_429_with_retry_after(http: urllib3.PoolManager) -> None:
    sandbox = SandboxServer(api_key=USERCOM_KEY, rate_limit=3).start()
    try:
        statuses = [call(http, sandbox, "GET", "/users-by-id/u1/") for _ in range(5)]
    finally:
        sandbox.stop()
    assert [s for s, _, _ in statuses[:3]] == [404, 404, 404]
    status, body, headers = statuses[3]
    assert status == 429 and int(headers["Retry-After"]) >= 1
    assert "throttled" in body["detail"]


def test_injected_faults_come_first(http: urllib3.PoolManager, sandbox: SandboxServer) -> None:
    control = http.request(
        "POST",
        sandbox.base_url.replace("/api/public", "/__sandbox__/faults"),
        body=json.dumps({"status": 503, "count": 2}),
        headers={"Content-Type": "application/json"},
    )
    assert control.status == 200
    assert [call(http, sandbox, "GET", "/users-by-id/u1/")[0] for _ in range(3)] == [503, 503, 404]


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"count": 2}', b'{"status": "x"}'])
def test_a_bad_fault_request_is_400_with_a_json_detail(
    http: urllib3.PoolManager, sandbox: SandboxServer, body: bytes
) -> None:
    url = sandbox.base_url.replace("/api/public", "/__sandbox__/faults")
    answer = http.request("POST", url, body=body, headers={"Content-Type": "application/json"})
    assert answer.status == 400
    assert "status" in json.loads(answer.data)["detail"]
    assert not sandbox.state.faults


def test_random_failures_follow_their_rates(http: urllib3.PoolManager, sandbox: SandboxServer) -> None:
    sandbox.state.failure_rates = {500: 0.25, 429: 0.25}
    statuses = [call(http, sandbox, "GET", "/users-by-id/u1/")[0] for _ in range(200)]
    # Seeded generator: the mix is near the rates, and throttled answers say when to come back.
    assert 30 <= statuses.count(500) <= 70 and 30 <= statuses.count(429) <= 70
    assert statuses.count(404) == 200 - statuses.count(500) - statuses.count(429)
    sandbox.state.failure_rates = {}
    assert call(http, sandbox, "GET", "/users-by-id/u1/")[0] == 404
