"""The sandbox keeps its users and custom attributes across restarts (as `relay dev` runs it, in
.relay-dev/), so the User.com ids a relay learned stay valid."""

from __future__ import annotations

from pathlib import Path

import urllib3

from service.cli.dev import SANDBOX_FILE
from service.devtools.usercom_sandbox import SandboxServer

KEY = "k" * 64


def test_users_and_attributes_survive_a_restart(tmp_path: Path) -> None:
    data_file = tmp_path / SANDBOX_FILE
    first = SandboxServer(api_key=KEY, data_file=data_file).start()
    headers = {"Authorization": f"Token {KEY}", "Content-Type": "application/json"}
    created = urllib3.request(
        "POST", f"{first.base_url}/users/update_or_create/", json={"user_id": "u1"}, headers=headers
    ).json()
    assert urllib3.request("PUT", f"{first.base_url}/users-by-id/u1/", json={"seats": 2}, headers=headers).status == 200
    first.stop()

    second = SandboxServer(api_key=KEY, data_file=data_file).start()
    try:
        v2 = {**headers, "Accept": "*/*; version=2"}
        again = urllib3.request("PUT", f"{second.base_url}/users/{created['id']}/", json={"seats": 3}, headers=v2)
        assert again.status == 200  # the same id, and "seats" still exists
        assert second.state.user_by_custom_id("u1")["attributes"] == {"seats": 3}  # type: ignore[index]
        new = urllib3.request(
            "POST", f"{second.base_url}/users/update_or_create/", json={"user_id": "u2"}, headers=headers
        ).json()
        assert new["id"] > created["id"]  # ids are never handed out twice
    finally:
        second.stop()


def test_without_a_file_nothing_is_written(tmp_path: Path) -> None:
    server = SandboxServer(api_key=KEY).start()
    server.state.seed(["u1"])
    server.stop()
    assert list(tmp_path.iterdir()) == []
