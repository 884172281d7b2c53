"""`relay sync paddle`: Paddle's customers (every status: its default scope is active only) and
subscriptions become the updates their `customer.updated` / `subscription.updated` notifications
would make; twice sends nothing new; an interrupted sync continues from its Redis checkpoint."""

from __future__ import annotations

import threading

import pytest
from redis import Redis

from service.backfill.feed import Feeder
from service.backfill.paddle_reader import PaddleReader
from service.backfill.paddle_sync import PADDLE
from service.backfill.sync import Checkpoint, sync
from service.config import Settings
from service.devtools.paddle_api import PaddleApiServer
from service.devtools.usercom_sandbox import SandboxServer
from service.store import keys
from service.store.ledger import Store
from tests.integration.conftest import PADDLE_KEY
from tests.integration.test_backfill import drain, run
from tests.paddle_history import customer, customer_id, subscription


def seed(paddle_api: PaddleApiServer, users: int) -> None:
    for n in range(users):
        paddle_api.state.customers.append(customer(n))
        paddle_api.state.subscriptions.append(subscription(n, plan="basic", status="active"))


def usercom_calls(sandbox: SandboxServer) -> int:
    return sum(1 for r in sandbox.state.requests if r["path"].startswith("/api/public/"))


def test_paddle_sync_twice_sends_nothing_new_and_reads_every_customer(
    paddle_env: dict[str, str], paddle_api: PaddleApiServer, sandbox: SandboxServer, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings.from_env(paddle_env)
    seed(paddle_api, users=4)
    paddle_api.state.customers[3]["status"] = "archived"  # outside Paddle's default scope: asked for by status
    replaced = subscription(0, plan="legacy", status="canceled")
    replaced["id"] = "sub_999999"  # user 0 moved from a canceled "legacy" subscription to its active one
    paddle_api.state.subscriptions.append(replaced)
    code, first = run(capsys, "sync", "paddle", "--json")
    assert (code, first["accepted"], first["duplicate"], first["resumed"]) == (0, 9, 0, False)
    drain(settings)
    for n in range(4):
        user = sandbox.state.user_by_custom_id(customer_id(n))
        assert user is not None and user["email"] == f"user{n}@example.com"
        assert (user["attributes"]["plan"], user["attributes"]["subscription_status"]) == ("basic", "active")
    calls = usercom_calls(sandbox)
    code, second = run(capsys, "sync", "paddle", "--json")
    assert (code, second["accepted"], second["duplicate"]) == (0, 0, 9)
    drain(settings)
    assert usercom_calls(sandbox) == calls


def test_an_interrupted_paddle_sync_continues_from_its_checkpoint(
    paddle_env: dict[str, str], paddle_api: PaddleApiServer, redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings.from_env(paddle_env)
    seed(paddle_api, users=250)
    stop = threading.Event()
    stop.set()  # as Ctrl-C during the first page
    feeder = Feeder(settings, Store.from_settings(redis, settings), "paddle")
    summary = sync(PaddleReader(PADDLE_KEY, paddle_api.base_url, max_rps=1000), feeder, shape=PADDLE, stop=stop)
    assert summary["interrupted"] and summary["accepted"] == 200
    assert Checkpoint(redis, "paddle", PADDLE.phases).load() == ("customers", "ctm_000199")  # oldest id first: 0 .. 199
    code, rest = run(capsys, "sync", "paddle", "--json")
    assert (code, rest["resumed"], rest["accepted"], rest["duplicate"]) == (0, True, 300, 0)
    assert not redis.exists(keys.sync_checkpoint("paddle"))
    assert Store.from_settings(redis, settings).ledger()["received"] == 500  # each customer and subscription once


def test_a_live_paddle_subscription_beats_an_ended_one_read_on_a_later_page(
    paddle_env: dict[str, str],
    paddle_api: PaddleApiServer,
    sandbox: SandboxServer,
    redis: Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = Settings.from_env(paddle_env)
    paddle_api.state.customers.extend(customer(n) for n in (0, 1))
    # oldest id first, 200 a page: the live subscription opens page 1, the canceled one (a newer id) ends page 2
    live = subscription(0, plan="team", status="active")
    between = [subscription(1, plan="basic", status="active") for _ in range(200)]
    for i, other in enumerate(between):
        other["id"] = f"sub_000001_{i:03d}"
    ended = subscription(0, plan="legacy", status="canceled")
    ended.update(id="sub_999999", canceled_at="2023-08-01T00:00:00.000000Z")
    paddle_api.state.subscriptions.extend([live, *between, ended])
    # --max-rps 0.5: page 2 is read two seconds after page 1, so its read time is a later second
    code, summary = run(capsys, "sync", "paddle", "--json", "--max-rps", "0.5")
    assert (code, summary["accepted"], summary["api_calls"]) == (0, 204, 3)
    drain(settings)
    user = sandbox.state.user_by_custom_id(customer_id(0))
    assert user is not None
    assert (user["attributes"]["subscription_status"], user["attributes"]["plan"]) == ("active", "team")
    assert user["attributes"]["mrr"] == 432.0 and "subscriber" in user["tags"]
