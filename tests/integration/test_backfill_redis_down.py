"""`relay backfill|sync|reconcile` without Redis: checked before the provider is read (one line naming
where Redis was looked for, no password, exit 2); lost part-way, the run ends with the summary of what
was done and one line saying so and how to resume (exit 1), never a traceback."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from redis import Redis

from service.config import Settings
from service.devtools.embedded_redis import RedisProcess
from service.devtools.paddle_api import PaddleApiServer
from service.devtools.stripe_api import StripeApiServer
from service.store import keys
from service.store.ledger import Store
from tests.integration.conftest import API_KEY, PADDLE_KEY
from tests.integration.redis_launch import RELAY, wait_until
from tests.ports import unused_port
from tests.stripe_history import customer, history, subscription

PASSWORD = "pw-never-printed"
AT_THE_START = [
    ["backfill", "stripe", "--since", "1d"],
    ["backfill", "stripe", "--since", "1d", "--dry-run"],
    ["sync", "stripe"],
    ["sync", "stripe", "--from-scratch", "--dry-run"],
    ["reconcile", "stripe"],
    ["backfill", "paddle", "--since", "1d"],
    ["sync", "paddle"],
    ["reconcile", "paddle", "--dry-run"],
]


def provider_env(stripe_api: StripeApiServer, paddle_api: PaddleApiServer, redis_url: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "REDIS_URL": redis_url,
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_API_BASE": stripe_api.base_url,
        "PADDLE_API_KEY": PADDLE_KEY,
        "PADDLE_API_BASE": paddle_api.base_url,
    }


# Each command once, the output formats in turn: the check comes before either is chosen (a CLI process
# costs ~1.2 s of CPU on a slow 2-core machine; all sixteen pairs took 22 s of it).
CASES = [(argv, n % 2 == 0) for n, argv in enumerate(AT_THE_START)]


@pytest.mark.parametrize(
    ("argv", "json_output"), CASES, ids=[" ".join(argv) + (" --json" if json else "") for argv, json in CASES]
)
def test_redis_down_at_the_start_is_one_line_exit_2_and_the_provider_is_never_read(
    argv: list[str], json_output: bool, stripe_api: StripeApiServer, paddle_api: PaddleApiServer
) -> None:
    for event in history(users=2, steps=1, start=int(time.time()) - 3600):
        stripe_api.state.add_event(event)
    stripe_api.state.customers.append(customer(0, created=int(time.time()) - 60))
    port = unused_port()  # nothing listens there
    env = provider_env(stripe_api, paddle_api, f"redis://admin:{PASSWORD}@127.0.0.1:{port}/0")
    command = [RELAY, *argv, *(["--json"] if json_output else [])]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"relay {argv[0]}: redis is not reachable at 127.0.0.1:{port}"]
    assert result.stdout == "" and PASSWORD not in result.stderr
    assert stripe_api.state.requests == [] and paddle_api.state.requests == []


def page_received(redis: Redis, settings: Settings) -> bool:
    return bool(Store.from_settings(redis, settings).ledger()["received"] >= 100)


def page_noted(redis: Redis, _settings: Settings) -> bool:
    """A reconcile's first page read: the users its missing events name are noted (it feeds once it has read
    the whole window)."""
    return bool(redis.keys(keys.first_users("stripe", "*")))


def page_checkpointed(redis: Redis, _settings: Settings) -> bool:
    return bool(redis.exists(keys.sync_checkpoint("stripe")))


LOST = [
    (
        ["backfill", "stripe"],
        "resume with: relay backfill stripe --since {since} --until {until} --max-rps 0.5",
        page_received,
    ),
    (
        ["reconcile", "stripe", "--until", "{end}"],  # a window closed by hand: the command again keeps it
        "run `relay reconcile stripe --since {since} --until {end} --max-rps 0.5` again",
        page_noted,
    ),
    (
        ["sync", "stripe"],
        "resume with: relay sync stripe --max-rps 0.5 (it continues from its checkpoint, if Redis kept one)",
        page_checkpointed,
    ),
]


@pytest.mark.parametrize(("argv", "then", "page_fed"), LOST, ids=[" ".join(argv) for argv, _, _ in LOST])
def test_redis_lost_during_the_run_is_one_line_saying_how_to_resume(
    argv: list[str],
    then: str,
    page_fed: Callable[[Redis, Settings], bool],
    tmp_path: Path,
    env: dict[str, str],
    stripe_api: StripeApiServer,
    paddle_api: PaddleApiServer,
) -> None:
    start = int(time.time()) - 3600
    events = history(users=80, steps=2, start=start)  # 240 events: three pages
    for event in events:
        stripe_api.state.add_event(event)
    for n in range(250):  # three pages of subscriptions
        stripe_api.state.customers.append(customer(n, created=start + n))
        stripe_api.state.subscriptions.append(subscription(n, created=start + n, plan="basic", status="active"))
    server = RedisProcess(tmp_path / "redis", port=unused_port()).start()
    try:
        settings = Settings.from_env({**env, "REDIS_URL": server.url})
        window = ["--since", str(start - 60)] if argv[0] != "sync" else []
        end = events[-1]["created"] + 1
        argv = [arg.format(end=end) for arg in argv]
        command = [RELAY, *argv, *window, "--max-rps", "0.5", "--json"]  # two seconds between pages
        with subprocess.Popen(
            command,
            env=provider_env(stripe_api, paddle_api, server.url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as run:
            try:
                with Redis.from_url(server.url, socket_timeout=5) as redis:
                    wait_until(lambda: page_fed(redis, settings), timeout=60, what="the first page fed")
                server.stop()
                out, err = run.communicate(timeout=120)
            finally:
                run.kill()
    finally:
        server.stop()
    line = then.format(since=start - 60, until=events[-100]["created"], end=end)
    assert run.returncode == 1, err
    assert err.splitlines() == [
        f"relay {argv[0]}: redis is not reachable at 127.0.0.1:{server.port} (lost during the run); {line}"
    ]
    summary = json.loads(out)  # the summary of what was done: a page fed, or (reconcile) found missing
    assert summary["read"] + summary["missing"] >= 100
