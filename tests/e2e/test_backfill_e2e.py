"""The real thing for backfill and reconcile: `relay web` under gunicorn, `relay worker` (its
backfill-lane worker included), redis-server, the User.com sandbox and the Stripe API double,
all as separate processes or sockets; `relay backfill` run as a command."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.devtools.stripe_api import StripeApiServer
from service.devtools.usercom_sandbox import SandboxServer
from service.store import keys
from service.store.ledger import Store
from tests.e2e.test_end_to_end import RELAY, post, running_relay, wait_settled
from tests.stripe_history import final_plans, history

API_KEY = "rk_test_e2e_readonly_7f3a"


@pytest.fixture
def stripe_api() -> Iterator[StripeApiServer]:
    server = StripeApiServer(API_KEY).start()
    yield server
    server.stop()


def api_env(stripe_api: StripeApiServer, **extra: str) -> dict[str, str]:
    return {"STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": stripe_api.base_url, **extra}


def test_a_third_lost_then_backfilled_ends_in_the_state_of_the_whole_history(
    tmp_path: Path, sandbox: SandboxServer, stripe_api: StripeApiServer
) -> None:
    events = history(users=8, steps=4, start=int(time.time()) - 3600)
    with running_relay(tmp_path, sandbox, api_env(stripe_api)) as relay:
        lost = 0
        for n, event in enumerate(events):
            stripe_api.state.add_event(event, delivered=n % 3 != 0)
            if n % 3:
                assert post(relay, json.dumps(event).encode()).status == 202
            else:
                lost += 1
        done = subprocess.run(
            [RELAY, "backfill", "stripe", "--since", "2h", "--json"],
            env=_env_of(relay),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert (summary["read"], summary["accepted"], summary["duplicate"]) == (len(events), lost, len(events) - lost)
        store = Store.from_settings(relay["redis"], relay["settings"])
        ledger = wait_settled(store, timeout=120)
        assert ledger["received"] == len(events) and ledger["dead_lettered"] == 0
        assert ledger["delivered"] + ledger["coalesced"] == len(events)
        for user, (plan, status) in final_plans(events).items():
            found = sandbox.state.user_by_custom_id(user)
            assert found is not None and found["email"] == f"{user.replace('-', '')}@example.com"
            assert (found["attributes"]["plan"], found["attributes"]["subscription_status"]) == (plan, status), user


def _env_of(relay: dict[str, Any]) -> dict[str, str]:
    settings = relay["settings"]
    return {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "STRIPE_API_KEY": settings.stripe_api_key,
        "STRIPE_API_BASE": settings.stripe_api_base,
    }


def test_relay_worker_reconciles_on_its_own_when_the_interval_is_set(
    tmp_path: Path, sandbox: SandboxServer, stripe_api: StripeApiServer
) -> None:
    events = history(users=3, steps=1, start=int(time.time()) - 3600)
    for event in events:
        stripe_api.state.add_event(event)  # Stripe believes them delivered; the relay never saw one
    with running_relay(tmp_path, sandbox, api_env(stripe_api, RELAY_RECONCILE_INTERVAL="3600")) as relay:
        redis = relay["redis"]
        deadline = time.monotonic() + 60
        while not redis.exists(keys.reconcile_last("stripe")):
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(0.2)
        ledger = wait_settled(Store.from_settings(redis, relay["settings"]), timeout=120)
        assert ledger["received"] == len(events)
        status = json.loads(relay["http"].request("GET", relay["base"] + "/status").data)["reconcile"]["stripe"]
        assert (status["missing"], status["healed"]) == (len(events), len(events))
        for n in range(3):
            assert sandbox.state.user_by_custom_id(f"user-{n}") is not None
        # The run's line, from the supervisor's thread, is JSON like every other line of the worker.
        lines = [
            json.loads(line) for line in (tmp_path / "worker.log").read_text().splitlines() if '"reconcile' in line
        ]
        assert any(
            e["level"] == "info" and e["msg"] == f"reconcile stripe: {len(events)} missing, {len(events)} healed"
            for e in lines
        )
