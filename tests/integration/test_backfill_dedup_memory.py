"""`relay backfill` over a window older than the dedup memory (RELAY_DEDUP_TTL_SECONDS): the events
the relay received before it are no longer known as duplicates, so they are fed and delivered again.
Re-feeding history can be the point, so the window is not refused: one line says so before the read."""

from __future__ import annotations

import json
import time

import pytest
from redis import Redis

from service.cli import main
from service.devtools.paddle_api import PaddleApiServer
from service.devtools.stripe_api import StripeApiServer
from tests.paddle_history import history as paddle_history
from tests.stripe_history import history

WARNING = "warning: --since reaches past the dedup memory"
DAY = 86_400


@pytest.fixture
def histories(
    api_env: dict[str, str], paddle_env: dict[str, str], stripe_api: StripeApiServer, paddle_api: PaddleApiServer
) -> None:
    """Two users' events from 15 days ago, in both providers."""
    start = int(time.time()) - 15 * DAY
    for event in history(users=2, steps=1, start=start):
        stripe_api.state.add_event(event)
    for event in paddle_history(users=2, steps=1, start=start):
        paddle_api.state.add_event(event)


@pytest.mark.parametrize(
    ("provider", "since", "dedup_days", "warned", "fed"),
    [
        ("stripe", "20d", 7, True, 4),  # each user's customer and subscription event
        ("paddle", "20d", 7, True, 4),
        ("stripe", "3d", 7, False, 0),
        ("stripe", "20d", 30, False, 4),  # the memory covers the window
    ],
)
def test_a_backfill_past_the_dedup_memory_says_what_it_feeds_again_and_runs(
    provider: str,
    since: str,
    dedup_days: int,
    warned: bool,
    fed: int,
    histories: None,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RELAY_DEDUP_TTL_SECONDS", str(dedup_days * DAY))
    assert main(["backfill", provider, "--since", since, "--json"]) == 0  # not refused
    out, err = capsys.readouterr()
    assert json.loads(out)["accepted"] == fed
    notes = [line for line in err.splitlines() if line.startswith(WARNING)]
    if not warned:
        assert notes == []
        return
    assert notes == [
        f"{WARNING} ({dedup_days * 24} h, RELAY_DEDUP_TTL_SECONDS): events older than that which the relay "
        "received already are fed (and delivered) again"
    ]


def test_the_warning_comes_before_the_read(
    histories: None, redis: Redis, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STRIPE_API_KEY", "rk_test_" + "x" * 24)  # refused by the double at the first read
    assert main(["backfill", "stripe", "--since", "20d", "--json"]) == 3
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(WARNING) and lines[-1].startswith("relay: ")
