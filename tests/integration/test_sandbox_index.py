"""The sandbox's index page (`GET /`) lists what it serves, and its fault example works as told."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from service.devtools.usercom_sandbox import API_PREFIX, SandboxServer
from tests.conftest import USERCOM_KEY


def call(url: str, *, method: str = "GET", body: Any = None, key: str | None = None) -> tuple[int, dict[str, str], Any]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Token {key}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            return answer.status, dict(answer.headers), json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def test_the_index_lists_the_api_and_the_control_plane(sandbox: SandboxServer) -> None:
    root = sandbox.base_url.removesuffix(API_PREFIX)
    status, headers, page = call(f"{root}/")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert page["api"]["prefix"] == API_PREFIX and page["api"]["base_url"] == sandbox.base_url
    assert "PUT /api/public/users-by-id/<custom_id>/" in page["api"]["endpoints"]
    assert set(page["control"]) == {
        "GET /__sandbox__/users",
        "GET /__sandbox__/requests",
        "POST /__sandbox__/faults",
    }
    assert USERCOM_KEY not in json.dumps(page)
    assert sandbox.state.requests == []  # the index is not an API call


def test_the_documented_fault_example_makes_the_next_calls_fail(sandbox: SandboxServer) -> None:
    root = sandbox.base_url.removesuffix(API_PREFIX)
    faults = call(f"{root}/")[2]["faults"]
    assert f"{root}/__sandbox__/faults" in faults["curl"]
    status, _, queued = call(f"{root}/__sandbox__/faults", method="POST", body=faults["example"])
    assert status == 200 and queued == {"queued": 2}
    user = f"{sandbox.base_url}/users-by-id/nobody/"
    for _ in range(2):
        status, headers, _ = call(user, key=USERCOM_KEY)
        assert (status, headers.get("Retry-After")) == (429, "3")
    assert call(user, key=USERCOM_KEY)[0] == 404  # then it answers normally: no such user


def test_a_sandbox_that_keeps_the_newest_calls_lists_those_and_forgets_older_ones() -> None:
    # `relay dev`'s sandbox runs for hours: the calls it records (with their bodies) must not grow
    # its memory without end.
    sandbox = SandboxServer(api_key=USERCOM_KEY, keep_requests=3).start()
    try:
        for n in range(8):
            call(f"{sandbox.base_url}/users-by-id/user-{n}/", key=USERCOM_KEY)
        root = sandbox.base_url.removesuffix(API_PREFIX)
        _, _, page = call(f"{root}/__sandbox__/requests")
        assert [r["path"] for r in page["requests"]] == [f"{API_PREFIX}/users-by-id/user-{n}/" for n in (5, 6, 7)]
        assert len(sandbox.state.requests) < 2 * 3  # trimmed as it goes, not only when listed
        _, _, index = call(f"{root}/")
        assert index["control"]["GET /__sandbox__/requests"].startswith("the newest 3 calls made to the API")
    finally:
        sandbox.stop()
