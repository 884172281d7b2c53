"""The real thing for Paddle: `relay web` under gunicorn, `relay worker`, redis-server, the User.com
sandbox and the Paddle API double as separate processes or sockets; signed Paddle webhooks for
two thirds of a history, then `relay backfill paddle` and `relay reconcile paddle` as commands."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.devtools.paddle_api import PaddleApiServer
from service.devtools.usercom_sandbox import SandboxServer
from service.store.ledger import Store
from tests.conftest import paddle_headers
from tests.e2e.test_end_to_end import RELAY, running_relay, wait_settled
from tests.paddle_history import final_plans, history

API_KEY = "pdl_sdbx_apikey_01je2e0readonly_Zq4"


@pytest.fixture
def paddle_api() -> Iterator[PaddleApiServer]:
    server = PaddleApiServer(API_KEY).start()
    yield server
    server.stop()


def relay_cmd(relay: dict[str, Any], *argv: str) -> subprocess.CompletedProcess[str]:
    settings = relay["settings"]
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "PADDLE_API_KEY": settings.paddle_api_key,
        "PADDLE_API_BASE": settings.paddle_api_base,
    }
    return subprocess.run([RELAY, *argv], env=env, capture_output=True, text=True, timeout=120)


def post(relay: dict[str, Any], event: dict[str, Any]) -> Any:
    body = json.dumps(event).encode()
    headers = {"Content-Type": "application/json", **paddle_headers(body)}
    return relay["http"].request("POST", relay["base"] + "/webhooks/paddle", body=body, headers=headers)


def test_a_third_of_paddle_lost_then_backfilled_ends_in_the_state_of_the_whole_history(
    tmp_path: Path, sandbox: SandboxServer, paddle_api: PaddleApiServer
) -> None:
    events = history(users=8, steps=4, start=int(time.time()) - 3600)
    env = {"PADDLE_API_KEY": API_KEY, "PADDLE_API_BASE": paddle_api.base_url}
    with running_relay(tmp_path, sandbox, env) as relay:
        lost = []
        for n, event in enumerate(events):
            paddle_api.state.add_event(event)
            if n % 3:
                assert post(relay, event).status == 202
            else:
                lost.append(event["event_id"])
        found = relay_cmd(relay, "reconcile", "paddle", "--since", "2h", "--dry-run", "--json")
        assert found.returncode == 0, found.stderr
        assert json.loads(found.stdout.strip().splitlines()[-1])["missing"] == len(lost)  # reported, nothing fed
        done = relay_cmd(relay, "backfill", "paddle", "--since", "2h", "--json")
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert (summary["read"], summary["accepted"], summary["duplicate"]) == (
            len(events),
            len(lost),
            len(events) - len(lost),
        )
        store = Store.from_settings(relay["redis"], relay["settings"])
        ledger = wait_settled(store, timeout=120)
        assert ledger["received"] == len(events) and ledger["dead_lettered"] == 0
        assert ledger["delivered"] + ledger["coalesced"] == len(events)
        for user, (plan, status) in final_plans(events).items():
            crm = sandbox.state.user_by_custom_id(user)
            assert crm is not None and crm["email"] == f"user{int(user[4:])}@example.com", user
            assert (crm["attributes"]["plan"], crm["attributes"]["subscription_status"]) == (plan, status), user
        again = relay_cmd(relay, "reconcile", "paddle", "--since", "2h", "--json")
        assert again.returncode == 0 and json.loads(again.stdout.strip().splitlines()[-1])["missing"] == 0
        rerun = relay_cmd(relay, "backfill", "paddle", "--since", "2h")  # progress and table: the key nowhere
        assert rerun.returncode == 0 and API_KEY not in rerun.stdout + rerun.stderr
        assert store.ledger()["received"] == len(events)
