"""The HTTP layer under every destination client, against the User.com sandbox."""

from __future__ import annotations

import threading

from service.core.version import version
from service.destinations.base import Rejected
from service.destinations.http_api import HttpApi
from service.devtools.usercom_sandbox import SandboxServer
from service.ops.metrics import USERCOM_REQUESTS, USERCOM_SECONDS
from tests.conftest import USERCOM_KEY


def _api(sandbox: SandboxServer, *also_secret: str) -> HttpApi:
    return HttpApi(
        base_url=sandbox.base_url,
        headers={"Authorization": f"Token {USERCOM_KEY}", "Content-Type": "application/json"},
        secrets=[USERCOM_KEY, *also_secret],
        connect_timeout=3,
        read_timeout=10,
        requests=USERCOM_REQUESTS,
        seconds=USERCOM_SECONDS,
    )


def test_each_thread_sees_its_own_last_call(sandbox: SandboxServer) -> None:
    """A batch's deliveries share one client on several threads: the trace of one must never show
    another's endpoint and status."""
    api = _api(sandbox)
    first_done, second_done = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def first() -> None:
        api.call("PUT", "/users-by-id/nobody/", {}, endpoint="PUT /users-by-id/:id/", allow_404=True)
        first_done.set()
        assert second_done.wait(30)
        seen["first"] = api.last_call

    def second() -> None:
        assert first_done.wait(30)
        api.call("POST", "/users/update_or_create/", {"user_id": "u9"}, endpoint="POST /users/update_or_create/")
        seen["second"] = api.last_call
        second_done.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert seen["first"] == ("PUT /users-by-id/:id/", 404)
    assert seen["second"][0] == "POST /users/update_or_create/"  # type: ignore[index]


def test_calls_say_they_come_from_relay_and_which_version(sandbox: SandboxServer) -> None:
    """An API's front end (WAF, CDN) may refuse a request without a User-Agent."""
    api = _api(sandbox)
    api.call("POST", "/users/update_or_create/", {"user_id": "u1"}, endpoint="POST /users/update_or_create/")
    assert [r["user_agent"] for r in sandbox.state.requests] == [f"relay/{version()}"]


def test_a_refusal_that_echoes_a_secret_keeps_it_out_of_the_body(sandbox: SandboxServer) -> None:
    """The API's 400 quotes the attribute name it refused inside its JSON answer, escaped; the body the
    relay keeps for the dead letter must not hold the secret in any of its spellings."""
    odd = 'k"ey\\with/odd'
    api = _api(sandbox, odd)
    try:
        api.call("POST", "/users/update_or_create/", {"user_id": "u1", odd: {"x": 1}}, endpoint="POST /users/")
    except Rejected as exc:
        refused = exc
    assert refused.status == 400
    assert refused.body is not None and "odd" not in refused.body and "[redacted]" in refused.body
