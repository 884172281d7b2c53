"""A run: the slots of a thread's next calls booked with its first while due now (RateLimiter.booking
with `further`), used without a round trip each, one lease for them all, given back when unused."""

from __future__ import annotations

from typing import Any

import pytest
from redis import Redis

import workers.ratelimit
from service.store import keys
from workers.ratelimit import LimitConfig, RateLimiter, Throttled
from workers.scripts_at_once import run_at_once

WINDOW, IN_FLIGHT, TAT = keys.USERCOM.limiter_window, keys.USERCOM.limiter_in_flight, keys.USERCOM.limiter_tat


@pytest.fixture(autouse=True)
def fresh_for_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stays fresh for 25 ms: long enough for a worker's calls, not for a test on a busy
    machine (test_a_run_goes_stale checks freshness itself)."""
    monkeypatch.setattr(workers.ratelimit, "RUN_FRESH_SECONDS", 60.0)


def limiter(redis: Redis, rate: float = 1000, burst: int = 100) -> RateLimiter:
    return RateLimiter(redis, LimitConfig(rate, burst, 100), sleep=0.0, destination_keys=keys.USERCOM)


def counting(lim: RateLimiter) -> list[int]:
    """Counts the limiter's own round trips to book a slot (a run's calls make none); after the
    booking (which runs the script itself along with others)."""
    asked: list[int] = []
    acquire = lim._acquire
    lim._acquire = lambda **kwargs: asked.append(1) or acquire(**kwargs)  # type: ignore[method-assign]
    return asked


def book_run(redis: Redis, lim: RateLimiter, further: int) -> list[Any]:
    """As a delivery group does: the first call's slot and `further` more, booked in one script."""
    booking = lim.booking(further=further)
    [answer] = run_at_once(redis, [booking])
    with lim.released_later() as slots:
        lim.booked(booking, answer)
        with lim.slot():
            pass
        lim.release_with_next(slots)
    return answer


def call(lim: RateLimiter) -> bool:
    """One user's call, in a block of its own as in a group; False when throttled."""
    try:
        with lim.released_later() as slots:
            with lim.slot():
                pass
            lim.release_with_next(slots)
        return True
    except Throttled:
        return False


def test_a_run_books_the_next_calls_with_the_first_and_they_share_its_lease(redis: Redis) -> None:
    lim = limiter(redis)
    answer = book_run(redis, lim, further=3)
    asked = counting(lim)
    assert answer[3] == 3 and redis.llen(WINDOW) == 4  # four slots in the window, booked at once
    for _ in range(3):
        assert call(lim)
        assert redis.zcard(IN_FLIGHT) == 1  # one call in flight at a time: the first's lease
    assert asked == []  # none of the three asked Redis
    assert call(lim) and asked == [1]  # the run used up: the next call books its own
    lim.end_run()
    lim.release(lim.unreleased())
    assert redis.zcard(IN_FLIGHT) == 0 and redis.llen(WINDOW) == 5


def test_a_run_is_no_longer_than_the_burst_and_the_window_allow(redis: Redis) -> None:
    lim = limiter(redis, rate=3, burst=3)
    assert book_run(redis, lim, further=5)[3] == 2  # three calls a second in all
    assert not call(limiter(redis, rate=3, burst=3))  # none left for another thread
    assert call(lim) and call(lim)  # the run's two
    assert not call(lim)
    lim.end_run()
    assert redis.llen(WINDOW) == 3


def test_slots_of_a_run_no_call_used_are_given_back(redis: Redis) -> None:
    lim, other = limiter(redis, rate=2, burst=2), limiter(redis, rate=2, burst=2)
    book_run(redis, lim, further=1)
    assert not call(other)  # the run holds this second's other slot
    lim.end_run()
    assert redis.llen(WINDOW) == 1
    assert call(other)  # given back: as if never booked


def test_a_429_this_process_sees_ends_every_run(redis: Redis) -> None:
    lim = limiter(redis)
    book_run(redis, lim, further=3)
    asked = counting(lim)
    lim.pause(5.0)
    assert not call(lim)  # asked Redis, and found the pause
    assert asked == [1]
    lim.end_run()
    assert redis.llen(WINDOW) == 1  # the three unused slots given back


def test_a_run_goes_stale(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    # Its calls must reach the destination close to their slots: a run not used at once is not used.
    monkeypatch.setattr(workers.ratelimit, "RUN_FRESH_SECONDS", 0.0)
    lim = limiter(redis)
    book_run(redis, lim, further=3)
    asked = counting(lim)
    assert call(lim) and asked == [1]


def test_a_call_that_fails_ends_the_run_with_its_lease(redis: Redis) -> None:
    lim = limiter(redis)
    book_run(redis, lim, further=3)
    asked = counting(lim)
    with pytest.raises(OSError), lim.released_later(), lim.slot():
        raise OSError("connection reset")
    assert redis.zcard(IN_FLIGHT) == 0  # the shared lease released with the failed call
    assert call(lim) and asked == [1]  # so the next call books a slot (and a lease) of its own
    assert redis.zcard(IN_FLIGHT) == 1
