"""Ctrl-C while `relay backfill|sync` waits to read again (the --max-rps gap between pages, or a 429's
Retry-After) ends the wait at once: the run ends as an interrupted run does (the summary, how to
resume, exit 1), not when the wait is over. A real `relay` process and a real SIGINT."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time

import pytest
from redis import Redis

from service.devtools.paddle_api import PaddleApiServer
from service.devtools.stripe_api import StripeApiServer
from tests.integration.redis_launch import RELAY, wait_until
from tests.integration.test_backfill_redis_down import provider_env
from tests.paddle_history import history as paddle_history
from tests.stripe_history import customer, history, subscription

STOPS_WITHIN = 10.0  # seconds; every wait below is 60 s or more


def ctrl_c_once_read(argv: list[str], env: dict[str, str], api: StripeApiServer | PaddleApiServer) -> tuple[str, str]:
    """Run `relay`, send one SIGINT once the provider has answered a read, and wait for the end."""
    with subprocess.Popen(
        [RELAY, *argv, "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as run:
        try:
            wait_until(lambda: api.state.requests, timeout=60, what="the first read")
            time.sleep(0.5)  # into the wait: a SIGINT sooner ends the run after its page all the same
            run.send_signal(signal.SIGINT)
            out, err = run.communicate(timeout=STOPS_WITHIN)
        finally:
            run.kill()
    assert run.returncode == 1, err
    return out, err


def test_ctrl_c_in_the_gap_between_pages_ends_a_sync_at_once(
    env: dict[str, str], redis: Redis, stripe_api: StripeApiServer, paddle_api: PaddleApiServer
) -> None:
    start = int(time.time()) - 3600
    for n in range(150):  # two pages of subscriptions
        stripe_api.state.customers.append(customer(n, created=start + n))
        stripe_api.state.subscriptions.append(subscription(n, created=start + n, plan="basic", status="active"))
    argv = ["sync", "stripe", "--from-scratch", "--max-rps", "0.01"]  # a read every 100 s
    environment = provider_env(stripe_api, paddle_api, env["REDIS_URL"])
    out, err = ctrl_c_once_read(argv, environment, stripe_api)
    resume = "relay sync stripe --max-rps 0.01 (it continues from its checkpoint)"
    assert err.splitlines()[-1] == f"interrupted; resume with: {resume}"
    summary = json.loads(out)
    assert (summary["interrupted"], summary["api_calls"], summary["accepted"]) == (True, 1, 200)
    assert len(stripe_api.state.requests) == 1
    # A dry run keeps no checkpoint: the same dry run again, not a real sync said to continue.
    stripe_api.state.requests.clear()
    out, err = ctrl_c_once_read([*argv, "--dry-run"], environment, stripe_api)
    again = "relay sync stripe --max-rps 0.01 --dry-run (a dry run keeps no checkpoint)"
    assert err.splitlines()[-1] == f"interrupted; run it again: {again}"
    assert json.loads(out)["dry_run"] is True


def test_ctrl_c_in_the_gap_between_pages_ends_a_backfill_at_once_with_its_resume_command(
    env: dict[str, str], redis: Redis, stripe_api: StripeApiServer, paddle_api: PaddleApiServer
) -> None:
    """In the gap after the first page of the read that learns the customers' first users: nothing was
    fed, so the command that goes on is the window as asked."""
    start = int(time.time()) - 3600
    events = history(users=50, steps=2, start=start)  # 150 events: two pages
    for event in events:
        stripe_api.state.add_event(event)
    argv = ["backfill", "stripe", "--since", str(start - 60), "--max-rps", "0.01"]
    started = int(time.time())
    out, err = ctrl_c_once_read(argv, provider_env(stripe_api, paddle_api, env["REDIS_URL"]), stripe_api)
    resumed = re.fullmatch(
        rf"interrupted; resume with: relay backfill stripe --since {start - 60} --until (\d+) --max-rps 0.01",
        err.splitlines()[-1],
    )
    assert resumed is not None and started - 1 <= int(resumed.group(1)) <= time.time()
    assert (json.loads(out)["accepted"], len(stripe_api.state.requests)) == (0, 1)


def test_ctrl_c_while_a_429_is_waited_out_ends_the_run_before_any_page(
    env: dict[str, str], redis: Redis, stripe_api: StripeApiServer, paddle_api: PaddleApiServer
) -> None:
    start = int(time.time()) - 3600
    for event in paddle_history(users=2, steps=1, start=start):
        paddle_api.state.add_event(event)
    paddle_api.state.fail_next(429, "100")  # waited out for 60 s (MAX_BACKOFF_SECONDS)
    started = int(time.time())
    argv = ["backfill", "paddle", "--since", str(start - 60)]
    out, err = ctrl_c_once_read(argv, provider_env(stripe_api, paddle_api, env["REDIS_URL"]), paddle_api)
    resumed = re.fullmatch(
        rf"interrupted; resume with: relay backfill paddle --since {start - 60} --until (\d+)", err.splitlines()[-1]
    )
    assert resumed is not None and started - 1 <= int(resumed.group(1)) <= time.time()  # the window as asked
    summary = json.loads(out)
    assert (summary["read"], summary["rate_limited"], len(paddle_api.state.requests)) == (0, 1, 1)


@pytest.mark.parametrize("held", [2, 4], ids=["learning read", "feeding read"])
def test_a_second_ctrl_c_stops_a_backfill_at_once_and_still_says_how_to_resume(
    env: dict[str, str], redis: Redis, stripe_api: StripeApiServer, paddle_api: PaddleApiServer, held: int
) -> None:
    """The first Ctrl-C waits for the page being read; a second does not, and the command that goes on is
    printed all the same: from the last page fed whole, or the window as asked when none was fed (the
    read that learns the customers' first users feeds nothing)."""
    start = int(time.time()) - 3600
    events = history(users=50, steps=2, start=start)  # 150 events: two pages, read twice
    for event in events:
        stripe_api.state.add_event(event)
    pages, answer = [], threading.Event()

    def hold(path: str) -> None:  # the page `held` is answered once the test is done
        pages.append(path)
        if len(pages) == held:
            answer.wait(60)

    stripe_api.state.after_page = hold
    argv = [RELAY, "backfill", "stripe", "--since", str(start - 60), "--json"]
    env = provider_env(stripe_api, paddle_api, env["REDIS_URL"])
    started = int(time.time())
    try:
        with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as run:
            try:
                wait_until(lambda: len(pages) == held, timeout=60, what=f"page {held}")
                run.send_signal(signal.SIGINT)
                time.sleep(0.5)
                assert run.poll() is None  # the first waits for the page
                run.send_signal(signal.SIGINT)
                out, err = run.communicate(timeout=STOPS_WITHIN)
            finally:
                run.kill()
    finally:
        answer.set()
    assert run.returncode == 1, err
    stopped = re.fullmatch(
        rf"relay backfill: stopped at once \(a second Ctrl-C\); resume with: relay backfill stripe "
        rf"--since {start - 60} --until (\d+)",
        err.splitlines()[-1],
    )
    assert stopped is not None, err
    if held == 4:
        assert (int(stopped.group(1)), json.loads(out)["accepted"]) == (events[-100]["created"], 100)
    else:
        assert started - 1 <= int(stopped.group(1)) <= time.time() and json.loads(out)["accepted"] == 0
