"""`relay backfill|reconcile` arguments that cannot make a sensible read are refused before anything
is read or written: one `relay: ...` line and exit 2 (bad input), never a traceback, a read that
never paces, or an empty window reported (and recorded for /status) as done."""

from __future__ import annotations

import shlex
import time

import pytest
from redis import Redis

from service.cli import build_parser, main
from service.cli.backfill import _backfill_again
from service.devtools.paddle_api import PaddleApiServer
from service.devtools.stripe_api import StripeApiServer
from tests.paddle_history import history as paddle_history
from tests.stripe_history import history

AN_HOUR_AHEAD = "<an hour from now>"  # resolved as each test runs: a test id must not change with the clock
REFUSED = [
    ("backfill", "paddle", "--since", "999999999999"),  # year 33658
    ("backfill", "paddle", "--since", "7d", "--until", "999999999999"),
    ("backfill", "paddle", "--since", "99999999999d"),
    ("backfill", "stripe", "--since", "99999999999d"),
    ("backfill", "stripe", "--since", "1999-12-31T00:00:00Z"),
    ("backfill", "stripe", "--since", "1d", "--until", "7d"),  # reversed
    ("backfill", "paddle", "--since", "1d", "--until", "1d"),  # empty
    ("backfill", "stripe", "--since", AN_HOUR_AHEAD),  # after now
    ("reconcile", "stripe", "--since", "1h", "--until", "2h"),
    ("reconcile", "paddle", "--since", "1m"),  # after the default --until (5 minutes ago)
    ("backfill", "stripe", "--since", "7d", "--max-rps", "nan"),
    ("backfill", "stripe", "--since", "7d", "--max-rps", "inf"),
    ("backfill", "stripe", "--since", "7d", "--max-rps", "1e-300"),
    ("reconcile", "paddle", "--max-rps", "5000"),
    ("backfill", "stripe", "--since", "7d", "--types", "foo.bar"),  # no such mapped type: would read nothing
    ("backfill", "stripe", "--since", "7d", "--types", "customer.*,foo.*"),  # one entry matching none
    ("backfill", "paddle", "--since", "7d", "--types", "customer.subscription.updated"),  # Stripe's, not Paddle's
]


@pytest.mark.parametrize("argv", REFUSED, ids=[" ".join(argv) for argv in REFUSED])
def test_an_argument_that_cannot_make_a_sensible_read_is_one_line_exit_2_before_any_read(
    argv: tuple[str, ...],
    api_env: dict[str, str],
    paddle_env: dict[str, str],
    stripe_api: StripeApiServer,
    paddle_api: PaddleApiServer,
    redis: Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    start = int(time.time()) - 3 * 86400
    for event in history(users=80, steps=2, start=start):  # 240 events: three pages
        stripe_api.state.add_event(event)
    for event in paddle_history(users=10, steps=2, start=start):
        paddle_api.state.add_event(event)
    ahead = str(int(time.time()) + 3600)
    assert main([*(ahead if arg == AN_HOUR_AHEAD else arg for arg in argv), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("relay: ") and err.count("\n") == 1
    assert stripe_api.state.requests == [] and paddle_api.state.requests == []
    assert redis.dbsize() == 0  # nothing fed, no reconcile recorded for /status


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("--since", "999999999999"), "'999999999999' is before 2000-01-01 or more than a day from now"),
        (("--since", "1d", "--until", "7d"), "--since 1d is not before --until 7d"),
        (("--since", "7d", "--max-rps", "nan"), "--max-rps nan: give 0.01 to 1000 reads a second"),
        (("--since", "7d", "--types", "invoice.*,foo.bar"), "--types foo.bar: no event type the mapping knows"),
        (("--since", "7d", "--types", "foo.bar"), "it knows charge.refunded, checkout.session.completed, "),
        (("--since", "7d", "--types", "foo.bar"), "`relay check-config` lists them"),
    ],
)
def test_the_refusal_names_the_value(
    argv: tuple[str, ...], says: str, api_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["backfill", "stripe", *argv]) == 2
    assert says in capsys.readouterr().err


def test_the_resume_command_is_the_run_as_asked_ready_for_a_shell() -> None:
    """It dropped --max-rps and --dry-run, and left `customer.*` for the shell to expand."""
    asked = build_parser().parse_args(
        ["backfill", "stripe", "--since", "7d", "--types", "customer.*,invoice paid", "--max-rps", "2.5", "--dry-run"]
    )
    again = _backfill_again(asked, 100, 200)
    assert again == (
        "relay backfill stripe --since 100 --until 200 --types 'customer.*,invoice paid' --max-rps 2.5 --dry-run"
    )
    assert shlex.split(again)[shlex.split(again).index("--types") + 1] == "customer.*,invoice paid"
