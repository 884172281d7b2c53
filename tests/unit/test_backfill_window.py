"""The time window of `relay backfill|reconcile`: --since and --until within 2000-01-01 and a day
from now, the window not empty; the bounds themselves are taken."""

from __future__ import annotations

import pytest

from service.backfill.events import EARLIEST, Window, parse_time, read_window

NOW = 1_750_000_000.5


def test_times_from_2000_to_a_day_ahead_are_taken() -> None:
    assert parse_time("2000-01-01T00:00:00Z", now=NOW) == EARLIEST
    assert parse_time(str(int(NOW) + 86_400), now=NOW) == int(NOW) + 86_400  # clocks differ
    assert parse_time("7d", now=NOW) == int(NOW) - 7 * 86_400


@pytest.mark.parametrize("text", ["1999-12-31T23:59:59Z", str(int(NOW) + 86_401), "9" * 40, "9" * 40 + "d"])
def test_times_past_the_bounds_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="before 2000-01-01 or more than a day from now"):
        parse_time(text, now=NOW)


def test_a_window_runs_to_its_until_its_default_or_now() -> None:
    assert read_window("2h", "1h", now=NOW) == Window(int(NOW) - 7200, int(NOW) - 3600)
    assert read_window("2h", None, now=NOW, default_until=int(NOW) - 300) == Window(int(NOW) - 7200, int(NOW) - 300)
    assert read_window("2h", None, now=NOW) == Window(int(NOW) - 7200)


@pytest.mark.parametrize(
    ("since", "until", "default_until", "bound"),
    [
        ("1h", "2h", None, "--until 2h"),
        ("1h", "1h", None, "--until 1h"),
        ("1m", None, int(NOW) - 300, "the default --until"),
        (str(int(NOW) + 3600), None, None, "now"),  # an hour ahead
    ],
)
def test_an_empty_window_is_refused(since: str, until: str | None, default_until: int | None, bound: str) -> None:
    with pytest.raises(ValueError, match=f"--since {since} is not before {bound}"):
        read_window(since, until, now=NOW, default_until=default_until)
