"""The limiter's sliding window and its AIMD effective rate, against a real Redis."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from redis import Redis

from service.store import keys
from service.store.limiter_scripts import JITTER_MS, effective_rate, increase_per_second
from tests.conftest import newest_slot
from workers.ratelimit import LimitConfig, RateLimiter, Throttled

OWN = keys.USERCOM


def limiter(redis: Redis, rate: float, burst: int = 1, sleep: float = 0.0) -> RateLimiter:
    return RateLimiter(redis, LimitConfig(rate, burst, 100), sleep=sleep, destination_keys=OWN)


def take(lim: RateLimiter) -> bool:
    try:
        with lim.slot():
            return True
    except Throttled:
        return False


def redis_ms(redis: Redis) -> float:
    seconds, micros = redis.time()
    return seconds * 1000 + micros / 1000


def rate_now(redis: Redis, ceiling: float) -> float:
    base, at = redis.hmget(OWN.limiter_rate, "base", "at")
    return effective_rate(
        float(base) if base else None,
        float(at) if at else None,
        redis_ms(redis),
        ceiling,
        increase_per_second(ceiling),
    )


def test_no_sliding_second_holds_more_than_the_rate_even_with_arrival_jitter(redis: Redis) -> None:
    # A burst as large as the rate would let GCRA grant R at once and R more one second later:
    # the window spaces every R-th slot one second plus the jitter margin apart instead.
    rate = 5
    lim = limiter(redis, rate=rate, burst=rate, sleep=3.0)
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(pool.map(lambda _: take(lim), range(2 * rate + 1)))
    slots = [at for _, at in redis.zrange(OWN.limiter_window, 0, -1, withscores=True)]
    assert len(slots) == rate  # the window keeps the last `rate` slots
    # Re-book on a fresh key set to see them all: every slot and the R-th after it.
    redis.flushall()
    booked: list[float] = []
    for _ in range(2 * rate + 1):
        assert take(lim)
        booked.append(newest_slot(redis))
    for earlier, later in zip(booked, booked[rate:], strict=False):
        assert later - earlier >= 1000 + JITTER_MS
    # So an arrival up to JITTER_MS late for one call and on time for the R-th after it still
    # leaves a full second between them: no 1 s window at the receiver sees more than R.


def test_a_run_spaced_ahead_counts_in_the_window_until_its_last_call_may_arrive(redis: Redis) -> None:
    # A run's n-th call may come any time from its booking until n x spacing later (plus the jitter):
    # its slot is in the window at the latest, so the calls booked after it wait for a second after
    # that, not after the booking. Every call placed the worst way within its bounds, no one-second
    # window at the receiver may hold more than the rate. (Slot times are kept to 0.1 ms: Lua's
    # number format.)
    rate, spacing_ms = 20, 50.0
    lim = limiter(redis, rate=rate, burst=rate, sleep=3.0)  # books slots up to 3 s ahead, without sleeping

    def book(further: int) -> list[tuple[float, float]]:
        """(earliest, latest) arrival of each call booked now."""
        args = lim._acquire_args(uuid.uuid4().hex, 0.0, [], further, spacing=spacing_ms / 1000)
        answer = lim._acquire(keys=lim._acquire_keys, args=args)
        assert answer[0]
        now = float(answer[4])
        slot = now + int(answer[1]) / 1000
        run = [(now, now + n * spacing_ms + JITTER_MS) for n in range(1, int(answer[3]) + 1)]
        return [(slot, slot + JITTER_MS), *run]

    calls = book(further=9)
    assert len(calls) == 10  # half the window
    for _ in range(30):
        calls += book(further=0)
    busiest = max(sum(1 for first, last in calls if first < at + 999.9 and last >= at) for _, at in calls)
    assert busiest == rate


def test_a_429_lowers_the_rate_once_per_episode_and_never_below_half(redis: Redis) -> None:
    ceiling = 40.0
    lim = limiter(redis, rate=ceiling, burst=100)
    for _ in range(30):  # 30 calls sent in the last second
        assert take(lim)
    lim.pause(0)
    after_first = rate_now(redis, ceiling)
    assert after_first == pytest.approx(max(ceiling / 2, 0.9 * 30), abs=0.05)
    assert lim.effective_rate == pytest.approx(after_first, abs=0.01)
    lim.pause(0)  # the same episode (other calls in flight when the receiver said no)
    assert rate_now(redis, ceiling) == pytest.approx(after_first, abs=0.05)
    redis.hset(OWN.limiter_rate, "hold_until", 0)  # the episode is over: the next 429 counts
    lim.pause(0)
    assert rate_now(redis, ceiling) == pytest.approx(0.9 * after_first, abs=0.05)
    redis.hset(OWN.limiter_rate, "hold_until", 0)
    redis.delete(OWN.limiter_window)  # a 429 while hardly anything was sent (another client's burst)
    after_first = rate_now(redis, ceiling)
    lim.pause(0)
    assert rate_now(redis, ceiling) == pytest.approx(after_first / 2, abs=0.05)  # at most halved


def test_retry_after_is_still_honoured_exactly(redis: Redis) -> None:
    lim = limiter(redis, rate=20)
    now_s = redis_ms(redis) / 1000
    assert lim.pause(7.0) == pytest.approx(now_s + 7.0, abs=0.5)


def test_the_rate_grows_back_additively_up_to_the_ceiling(redis: Redis) -> None:
    ceiling = 20.0
    now = redis_ms(redis)
    redis.hset(OWN.limiter_rate, mapping={"base": 10, "at": now - 10_000, "hold_until": 0})
    assert rate_now(redis, ceiling) == pytest.approx(10 + 10 * increase_per_second(ceiling), abs=0.05)
    lim = limiter(redis, rate=ceiling, burst=100)
    assert take(lim) and lim.effective_rate == pytest.approx(10 + 10 * increase_per_second(ceiling), abs=0.05)
    redis.hset(OWN.limiter_rate, "at", now - 10_000_000)
    assert take(lim) and lim.effective_rate == ceiling  # never above the ceiling


def test_aimd_converges_under_an_unknown_limit_and_keeps_most_of_it(redis: Redis) -> None:
    # A receiver whose limit is 10/s while the relay is configured at 40/s. Each round sends one
    # second's worth at the effective rate (the window is what was sent); above the limit the
    # receiver answers 429 to the first call over it. Time is moved on by shifting the rate's clock, not by sleeping.
    ceiling, limit = 40.0, 10
    lim = limiter(redis, rate=ceiling, burst=100)
    rates: list[float] = []
    throttled, calls = 0, 0
    for _ in range(400):
        rate = rate_now(redis, ceiling)
        rates.append(rate)
        now = redis_ms(redis)
        sent = min(int(rate), limit + 1)  # the receiver says no to the call over its limit
        redis.delete(OWN.limiter_window)
        redis.zadd(OWN.limiter_window, {f"sent-{i}": now - 900 + i * (900 / sent) for i in range(sent)})
        calls += sent
        if sent > limit:
            throttled += 1
            redis.hset(OWN.limiter_rate, "hold_until", 0)
            lim.pause(0)
        # one second passes
        base, at = redis.hmget(OWN.limiter_rate, "base", "at")
        if base is not None:
            redis.hset(OWN.limiter_rate, "at", float(at) - 1000)
    converged = next(i for i, r in enumerate(rates) if int(r) <= limit)
    assert converged <= 5  # a handful of 429s: the first is measured against what was sent
    tail = rates[converged:]
    # stays at the limit afterwards: probes one call a second over it at most, then backs off
    assert max(tail) < limit + 1 + increase_per_second(ceiling)
    assert sum(tail) / len(tail) >= 0.85 * limit
    assert throttled / calls <= 0.03  # rare probing 429s
