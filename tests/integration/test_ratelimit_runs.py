"""A run: the slots of a thread's next calls booked with its first while due now (RateLimiter.booking
with `further`), used without a round trip each, one lease for them all, given back when unused."""

from __future__ import annotations

import itertools
import time
from types import SimpleNamespace
from typing import Any

import pytest
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

import workers.ratelimit
from service.store import keys
from service.store.limiter_scripts import GIVE_BACK_SCRIPT
from tests.ports import unused_port
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
    assert answer[3] == 3 and redis.zcard(WINDOW) == 4  # four slots in the window, booked at once
    for _ in range(3):
        assert call(lim)
        assert redis.zcard(IN_FLIGHT) == 1  # one call in flight at a time: the first's lease
    assert asked == []  # none of the three asked Redis
    assert call(lim) and asked == [1]  # the run used up: the next call books its own
    lim.end_run()
    lim.release(lim.unreleased())
    assert redis.zcard(IN_FLIGHT) == 0 and redis.zcard(WINDOW) == 5


@pytest.mark.parametrize(("rate", "burst"), [(5, 4), (4, 8)], ids=["the-burst", "the-window"])
def test_a_run_takes_no_more_than_half_the_burst_and_the_window(redis: Redis, rate: float, burst: int) -> None:
    # 4 slots at once: in the burst (5/s, burst 4; the window would take 5), or in the window (4/s, burst 8).
    # The next slot comes 200 ms (the burst) or a second (the window) later: the test's calls must all
    # come before it (at 100/s, 10 ms, a loaded machine's run of this test took longer and found it).
    lim, other = limiter(redis, rate=rate, burst=burst), limiter(redis, rate=rate, burst=burst)
    assert book_run(redis, lim, further=5)[3] == 1  # the first slot and one more: half
    assert call(other) and call(other)  # another thread still finds the other half at once
    assert call(lim)  # the run's
    assert not call(lim) and not call(other)


def test_slots_of_a_run_no_call_used_are_given_back(redis: Redis) -> None:
    lim, other = limiter(redis, rate=4, burst=4), limiter(redis, rate=4, burst=4)
    assert book_run(redis, lim, further=1)[3] == 1
    assert call(other) and call(other)
    assert not call(other)  # the run holds this second's last slot
    lim.end_run()
    assert redis.zcard(WINDOW) == 3
    assert call(other)  # given back: as if never booked


def test_a_run_given_back_late_gives_no_credit_time_has_spent(redis: Redis) -> None:
    # 5/s, burst 4: after the burst, the next slot comes 200 ms later, and the test's calls must all come
    # before it. A loaded machine may take longer (at 10/s, 100 ms, it did): such a try shows nothing,
    # and is made again.
    for _ in range(3):
        redis.delete(WINDOW, IN_FLIGHT, TAT)
        lim, other = limiter(redis, rate=5, burst=4), limiter(redis, rate=5, burst=4)
        assert book_run(redis, lim, further=1)[3] == 1  # its unused slot was due 200 ms after the first
        time.sleep(1.3)  # the schedule and the 1 s window are idle again: its claim is spent
        started = time.monotonic()
        burst = [call(other) for _ in range(5)]
        lim.end_run()
        after = call(other)
        if time.monotonic() - started < 0.15:
            break
    assert burst == [True] * 4 + [False]  # the whole burst, and no more
    assert not after  # giving it back now must not make room for a fifth at once


def test_a_429_this_process_sees_ends_every_run(redis: Redis) -> None:
    lim = limiter(redis)
    book_run(redis, lim, further=3)
    asked = counting(lim)
    lim.pause(5.0)
    assert not call(lim)  # asked Redis, and found the pause
    assert asked == [1]
    lim.end_run()
    assert redis.zcard(WINDOW) == 1  # the three unused slots given back


def test_a_run_goes_stale_and_is_given_back_with_the_next_booking(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its calls must reach the destination close to their slots: a run not used at once is not used,
    # and its slots are given back by the next call's booking (no round trip of its own). It served
    # no call while fresh (calls slower than its freshness, as against a distant API): none is
    # booked again, to sit unused while other callers want them.
    monkeypatch.setattr(workers.ratelimit, "RUN_FRESH_SECONDS", 0.0)
    lim = limiter(redis)
    book_run(redis, lim, further=3)
    asked = counting(lim)
    assert redis.zcard(WINDOW) == 4
    assert call(lim) and asked == [1]
    assert redis.zcard(WINDOW) == 2  # the first call's slot and this one's: the run's three went back


def clock(monkeypatch: pytest.MonkeyPatch, sleep: Any = time.sleep) -> list[float]:
    """The limiter's monotonic clock, moved by the test (and its sleep, if given)."""
    now = [1000.0]
    monkeypatch.setattr(workers.ratelimit, "time", SimpleNamespace(monotonic=lambda: now[0], sleep=sleep))
    return now


def test_a_stale_run_is_booked_again_for_as_many_calls_as_it_served(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = clock(monkeypatch)
    lim = limiter(redis)
    book_run(redis, lim, further=5)
    asked = counting(lim)
    assert call(lim) and call(lim) and asked == []  # two calls served while fresh
    now[0] += 100.0  # stale (the module fixture keeps runs fresh for 60 s), three slots left
    assert call(lim) and asked == [1]
    # the three went back; this call's slot and two more (as many as the run served) booked again
    assert redis.zcard(WINDOW) == 3 + 3
    assert call(lim) and call(lim) and asked == [1]  # the new run's
    assert redis.zcard(IN_FLIGHT) == 1  # under this call's lease
    assert call(lim) and asked == [1, 1]  # used up


def run_slots(redis: Redis) -> list[float]:
    """The times (ms) of the run's slots in the window (`<token>:<n>`), in order."""
    slots = {member.decode(): at for member, at in redis.zrange(WINDOW, 0, -1, withscores=True)}
    return [slots[member] for member in sorted((m for m in slots if ":" in m), key=lambda m: int(m.split(":")[1]))]


def paced_run(
    redis: Redis, monkeypatch: pytest.MonkeyPatch, pace: float, further: int
) -> tuple[RateLimiter, list[float]]:
    """A limiter whose calls came `pace` seconds apart (three of them), and a run it then booked, its
    slots fresh for RUN_FRESH_SECONDS as in production; with the test's clock."""
    monkeypatch.setattr(workers.ratelimit, "RUN_FRESH_SECONDS", 0.025)
    now = clock(monkeypatch)
    lim = limiter(redis)
    for _ in range(3):
        assert call(lim)
        now[0] += pace
    book_run(redis, lim, further=further)
    return lim, now


PACE = 0.01  # seconds between a thread's calls, in these tests


def spacing() -> float:
    """Seconds between a run's slots at PACE: with the margin, no more than the cap."""
    return min(workers.ratelimit.MAX_SPACING_SECONDS, workers.ratelimit.PACE_MARGIN * PACE)


def test_a_run_s_slots_follow_the_thread_s_pace_past_one_slot_s_freshness(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    lim, now = paced_run(redis, monkeypatch, PACE, further=4)
    slots = run_slots(redis)
    assert [round(b - a, 1) for a, b in itertools.pairwise(slots)] == [round(spacing() * 1000, 1)] * 3
    asked = counting(lim)
    for _ in range(4):  # at the pace: the last comes 40 ms after the booking, each before its slot's time
        now[0] += PACE
        assert call(lim)
    assert asked == []
    assert call(lim) and asked == [1]  # used up


def test_a_run_s_call_later_than_its_slot_s_time_finds_the_run_stale(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    lim, now = paced_run(redis, monkeypatch, PACE, further=4)
    asked = counting(lim)
    now[0] += spacing() + 0.025 + 0.001  # its first slot's time, and the 25 ms a call may come after it
    assert call(lim) and asked == [1]
    assert len(run_slots(redis)) == 0  # the four went back: it served no call, none is booked again


def test_a_run_serves_no_call_past_its_longest_life_however_its_slots_are_spaced(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 429 another process saw reaches this one's runs only through the pause: their calls after it
    # are bounded by how long a run lives.
    monkeypatch.setattr(workers.ratelimit, "MAX_SPACING_SECONDS", 1.0)
    lim, now = paced_run(redis, monkeypatch, 0.03, further=8)  # its slots 90 ms apart: the 4th at 360 ms
    asked = counting(lim)
    served = 0
    while not asked:
        now[0] += 0.03
        assert call(lim)
        served += 1
    assert served - 1 == int(workers.ratelimit.RUN_MAX_SECONDS / 0.03)  # the calls within its life


def test_a_run_ended_by_a_429_is_not_booked_again(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    now = clock(monkeypatch)
    lim = limiter(redis)
    book_run(redis, lim, further=3)
    assert call(lim)  # served while fresh
    lim.pause(0.0)  # a 429 this process saw, its pause already over
    now[0] += 100.0  # stale
    asked = counting(lim)
    assert call(lim) and asked == [1]
    assert redis.zcard(WINDOW) == 3  # the two slots served and this one's: no run booked again


def test_a_429_while_a_renewal_waits_leaves_no_run_to_use(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    # The renewal's first answer: at the concurrency cap, wait. Another thread of this process sees a
    # 429 meanwhile: the retry books this call's slot alone, and no run serves a call after the 429.
    lim = RateLimiter(redis, LimitConfig(1000, 100, 2), sleep=1.0, destination_keys=keys.USERCOM)

    def sleep_through_a_429(seconds: float) -> None:
        lim.pause(0.0)
        time.sleep(seconds)

    now = clock(monkeypatch, sleep=sleep_through_a_429)
    book_run(redis, lim, further=5)
    assert call(lim)  # served while fresh
    now[0] += 100.0  # stale
    seconds, micros = redis.time()
    at_cap_until = seconds * 1000 + micros / 1000 + 30  # two other calls in flight for 30 ms: the cap
    redis.zadd(IN_FLIGHT, {"other-1": at_cap_until, "other-2": at_cap_until})
    asked = counting(lim)
    assert call(lim) and asked == [1, 1]  # asked, waited, asked again
    assert call(lim) and asked == [1, 1, 1]  # no run: the next call books its own slot


def test_a_run_booked_while_a_429s_pause_is_being_set_ends_with_it(redis: Redis) -> None:
    # Another thread books a run after this one counted its 429, before Redis holds the pause.
    lim = limiter(redis)
    pause_script = lim._pause

    def run_booked_meanwhile(**kwargs: Any) -> Any:
        book_run(redis, lim, further=3)
        return pause_script(**kwargs)

    lim._pause = run_booked_meanwhile  # type: ignore[method-assign]
    lim.pause(0.0)
    asked = counting(lim)
    assert call(lim) and asked == [1]  # not served by that run: it asked Redis


@pytest.mark.parametrize("ran", [True, False], ids=["ran-in-redis", "never-ran"])
def test_a_booking_whose_answer_is_lost_leaves_no_lease_held(redis: Redis, ran: bool) -> None:
    # The call before's lease was to be released by this booking; if the booking ran, it took a lease
    # of its own. Either would hold a place under USERCOM_MAX_IN_FLIGHT until it expires (30 s).
    lim = limiter(redis)
    assert call(lim)
    assert redis.zcard(IN_FLIGHT) == 1  # the first call's, released with the next booking
    acquire = lim._acquire

    def answer_lost(**kwargs: Any) -> Any:
        if ran:
            acquire(**kwargs)
        raise RedisConnectionError("the connection dropped before the answer")

    lim._acquire = answer_lost  # type: ignore[method-assign]
    with pytest.raises(RedisConnectionError), lim.released_later(), lim.slot():
        pass
    assert redis.zcard(IN_FLIGHT) == 0


def test_a_429_between_booking_a_run_and_its_answer_ends_it(redis: Redis) -> None:
    lim = limiter(redis)
    booking = lim.booking(further=3)
    [answer] = run_at_once(redis, [booking])
    lim.pause(5.0)  # another thread's call, while this one's booking was on its way
    with lim.released_later() as slots:
        lim.booked(booking, answer)
        with lim.slot():  # booked before the pause
            pass
        lim.release_with_next(slots)
    assert not call(lim)  # asked Redis, and found the pause


def test_a_run_not_given_back_for_want_of_redis_leaves_the_delivery_going(redis: Redis) -> None:
    lim = limiter(redis)
    book_run(redis, lim, further=3)
    nowhere = Redis(port=unused_port(), retry=Retry(NoBackoff(), 0))  # refused at once
    lim._give_back = nowhere.register_script(GIVE_BACK_SCRIPT)
    lim.end_run()  # logged, not raised: the slots stay booked
    assert redis.zcard(WINDOW) == 4


def test_a_call_that_fails_ends_the_run_with_its_lease(redis: Redis) -> None:
    lim = limiter(redis)
    book_run(redis, lim, further=3)
    asked = counting(lim)
    with pytest.raises(OSError), lim.released_later(), lim.slot():
        raise OSError("connection reset")
    assert redis.zcard(IN_FLIGHT) == 0  # the shared lease released with the failed call
    assert call(lim) and asked == [1]  # so the next call books a slot (and a lease) of its own
    assert redis.zcard(IN_FLIGHT) == 1


def test_a_run_is_fresh_from_its_booking_not_from_its_answer(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    # The claims sent along with the booking (and a busy process) delay the answer: that time counts.
    monkeypatch.setattr(workers.ratelimit, "RUN_FRESH_SECONDS", 0.05)
    lim = limiter(redis)
    booking = lim.booking(further=3)
    [answer] = run_at_once(redis, [booking])
    time.sleep(0.1)
    with lim.released_later() as slots:
        lim.booked(booking, answer)
        with lim.slot():
            pass
        lim.release_with_next(slots)
    asked = counting(lim)
    assert call(lim) and asked == [1]
