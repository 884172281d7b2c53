"""The cluster-wide User.com limiter against a real Redis: GCRA, concurrency cap, 429 pause."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import Any

import pytest
from redis import Redis
from redis.exceptions import RedisError
from rq.registry import ScheduledJobRegistry

from service.config import Settings
from service.devtools.embedded_redis import RedisProcess
from service.store import keys
from service.store.limiter_scripts import JITTER_MS
from tests.conftest import an_update, newest_slot
from workers.delivery.job import deliver_update
from workers.ratelimit import LimitConfig, RateLimiter, Throttled
from workers.runner import build_context, limit_config, run_worker


def limiter(redis: Redis, rate: float = 10, burst: int = 1, in_flight: int = 100, sleep: float = 0.0) -> RateLimiter:
    return RateLimiter(redis, LimitConfig(rate, burst, in_flight), sleep=sleep, destination_keys=keys.USERCOM)


def take(lim: RateLimiter) -> bool:
    try:
        with lim.slot():
            return True
    except Throttled:
        return False


def test_burst_then_one_slot_per_interval(redis: Redis) -> None:
    lim = limiter(redis, rate=5, burst=3)  # the next slot 200 ms on: time enough for a loaded machine's calls
    assert [take(lim) for _ in range(4)] == [True, True, True, False]
    with pytest.raises(Throttled) as caught, lim.slot():
        pass
    assert 0 < caught.value.wait <= 0.2


def test_rate_holds_across_processes_sharing_redis(redis_server: Any, redis: Redis) -> None:
    # Two limiters on two connections stand for two worker processes: one budget between them.
    a = limiter(Redis.from_url(redis_server.url), rate=20, sleep=0.2)
    b = limiter(Redis.from_url(redis_server.url), rate=20, sleep=0.2)
    granted = []
    started = time.monotonic()
    while time.monotonic() - started < 1.0:
        for lim in (a, b):
            if take(lim):
                granted.append(time.monotonic() - started)
    # Slots are 50 ms apart on Redis' clock: at most 21 in one second (plus one for clock edges).
    assert len(granted) <= 22
    assert len(granted) >= 10  # and the budget is used, not starved


def test_waiting_callers_book_one_slot_each(redis: Redis) -> None:
    # Five callers at once: each books its own next slot and sleeps until it; none is refused and
    # the schedule moves on by exactly one interval per caller.
    lim = limiter(redis, rate=10, sleep=1.0)
    asked = []
    acquire = lim._acquire
    lim._acquire = lambda **kwargs: asked.append(1) or acquire(**kwargs)  # type: ignore[method-assign]
    with ThreadPoolExecutor(max_workers=5) as pool:
        granted = list(pool.map(lambda _: take(lim), range(5)))
    assert granted == [True] * 5
    assert len(asked) == 5  # once each: no waking up to compete for the same slot again
    # Measured on the slots themselves, not from a clock read before the threads (a loaded machine may
    # start them late): one interval apart, and the schedule one interval past the last.
    slots = sorted(at for _, at in redis.zrange(keys.USERCOM.limiter_window, 0, -1, withscores=True))
    assert [round(later - earlier) for earlier, later in pairwise(slots)] == [100] * 4
    assert float(redis.get(keys.USERCOM.limiter_tat)) == pytest.approx(slots[-1] + 100, abs=1)
    assert redis.zcard(keys.USERCOM.limiter_in_flight) == 0


def test_a_429_while_a_caller_sleeps_until_its_slot_stops_it(redis: Redis) -> None:
    lim = limiter(redis, rate=2, sleep=1.0)
    assert take(lim)  # the next slot is half a second ahead
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(take, lim)  # books it and sleeps
        time.sleep(0.1)
        lim.pause(5.0)
        assert waiting.result() is False  # woke up paused: gives the slot up, put back
    assert redis.zcard(keys.USERCOM.limiter_in_flight) == 0


def test_concurrency_cap_counts_calls_in_flight(redis: Redis) -> None:
    lim = limiter(redis, rate=1000, burst=100, in_flight=2)
    with lim.slot(), lim.slot():
        assert not take(lim)
    assert take(lim)  # released on exit


def test_slots_released_later_are_held_until_released_and_one_per_delivery(redis: Redis) -> None:
    lim = limiter(redis, rate=1000, burst=100, in_flight=1)
    with lim.released_later() as held:
        assert take(lim)
        assert redis.zcard(keys.USERCOM.limiter_in_flight) == 1  # kept for the caller's own write
        assert take(lim)  # the same delivery's next call: its earlier slot is given back first
        assert len(held) == 1 and redis.zscore(keys.USERCOM.limiter_in_flight, held[0]) is not None
    assert redis.zcard(keys.USERCOM.limiter_in_flight) == 0  # whatever is left goes with the block


def test_a_delivery_releases_its_slots_with_its_outcome(settings: Settings, redis: Redis) -> None:
    # One call at most in flight, and a user User.com does not know: three calls in one delivery.
    ctx = build_context(Settings.from_env({**_env(settings), "USERCOM_MAX_IN_FLIGHT": "1"}), "usercom")
    update = an_update(user_id="new-user")
    assert ctx.store.accept(update)
    assert deliver_update(ctx, update) == "delivered"
    assert redis.zcard(keys.USERCOM.limiter_in_flight) == 0
    assert ctx.store.ledger()["delivered"] == 1


def test_429_pauses_every_worker_and_is_never_shortened(redis: Redis) -> None:
    a, b = limiter(redis, rate=1000, burst=100), limiter(redis, rate=1000, burst=100)
    until = a.pause(2.0)
    assert until == pytest.approx(time.time() + 2.0, abs=0.5)
    assert b.pause(0.5) == until
    with pytest.raises(Throttled) as caught, b.slot():
        pass
    assert 1.0 < caught.value.wait <= 2.0
    assert float(redis.get(keys.USERCOM.last_429)) == pytest.approx(time.time(), abs=2)


def test_a_429_asking_for_days_pauses_no_longer_than_the_retry_cap(redis: Redis) -> None:
    lim = RateLimiter(redis, LimitConfig(1000, 100, 100, max_pause_seconds=5), destination_keys=keys.USERCOM)
    assert lim.pause(864_000) == pytest.approx(time.time() + 5, abs=1)


def test_a_pause_set_before_the_cap_ends_at_the_cap_once_a_worker_starts(redis: Redis) -> None:
    uncapped = RateLimiter(redis, LimitConfig(1000, 100, 100, max_pause_seconds=864_000), destination_keys=keys.USERCOM)
    uncapped.pause(864_000)  # ten days, as a release without the cap kept a Retry-After
    capped = RateLimiter(redis, LimitConfig(1000, 100, 100, max_pause_seconds=5), destination_keys=keys.USERCOM)
    assert capped.shorten_pause() is True
    assert int(redis.get(keys.USERCOM.limiter_paused_until)) / 1000 == pytest.approx(time.time() + 5, abs=1)
    assert capped.shorten_pause() is False  # within the cap: left as it is
    with pytest.raises(Throttled), capped.slot():  # and still paused until then
        pass


def test_a_worker_shortens_such_a_pause_as_it_starts(settings: Settings, redis: Redis) -> None:
    uncapped = RateLimiter(redis, LimitConfig(1000, 100, 100, max_pause_seconds=864_000), destination_keys=keys.USERCOM)
    uncapped.pause(864_000)
    assert run_worker(settings, destination="usercom", burst=True) is True  # the queue is empty: it ends
    ends = int(redis.get(keys.USERCOM.limiter_paused_until)) / 1000
    assert ends == pytest.approx(time.time() + settings.retry_max_delay_seconds, abs=2)


def test_a_call_s_lease_outlasts_its_longest_call(settings: Settings, redis: Redis) -> None:
    """USERCOM_MAX_IN_FLIGHT counts a call until its lease ends: past the longest call the settings allow."""
    slow = Settings.from_env({**_env(settings), "USERCOM_READ_TIMEOUT_SECONDS": "27"})
    config = limit_config(slow, "usercom")
    assert config.max_pause_seconds == slow.retry_max_delay_seconds
    lim = RateLimiter(redis, config, destination_keys=keys.USERCOM)
    with lim.released_later(), lim.slot():
        [(_, lease_end_ms)] = redis.zrange(keys.USERCOM.limiter_in_flight, 0, -1, withscores=True)
    longest = slow.destination("usercom").connect_timeout + 27
    assert lease_end_ms / 1000 - time.time() > longest


def test_a_throttled_job_is_put_back_without_counting_a_failure(settings: Settings, redis: Redis) -> None:
    ctx = build_context(
        Settings.from_env({**_env(settings), "USERCOM_RATE_LIMIT": "1", "USERCOM_BURST": "1"}), "usercom"
    )
    RateLimiter(ctx.redis, limit_config(ctx.settings, "usercom"), destination_keys=keys.USERCOM).pause(30)
    update = an_update()
    assert ctx.store.accept(update)
    assert deliver_update(ctx, update, attempt=3) == "throttled"
    registry = ScheduledJobRegistry(queue=ctx.queues[keys.LIVE])
    [job_id] = registry.get_job_ids()
    assert re.fullmatch(r"stripe-u[0-9a-f]{12}-j[0-9a-f]{12}-t[0-9a-f]{12}", job_id)  # the user's job, put back
    job = ctx.queues[keys.LIVE].fetch_job(job_id)
    assert job is not None and job.args[0] == keys.user_ref("stripe", "user:u1")
    assert job.args[1:] == [3, None, "live"]  # same attempt, no failure clock
    assert registry.get_scheduled_time(job_id).timestamp() >= time.time() + 28
    assert ctx.store.ledger()["in_flight"] == 1 and ctx.store.dead_letters() == []


def _env(settings: Settings) -> dict[str, str]:
    return {
        "REDIS_URL": settings.redis_url,
        "USERCOM_API_URL": settings.destination("usercom").api_url,
        "USERCOM_API_KEY": settings.destination("usercom").credential,
        "STRIPE_WEBHOOK_SECRETS": "whsec_x",
    }


def test_every_grant_is_recorded_even_a_fraction_of_a_millisecond_early(redis: Redis) -> None:
    # Lua's wait of 0.4 ms would reach Python as the integer 0, i.e. "granted" with nothing
    # recorded: the next caller would get the same slot. A grant must always move the schedule.
    lim = limiter(redis, rate=10)
    for _ in range(200):
        seconds, micros = redis.time()
        early = seconds * 1000 + micros / 1000 + 0.4
        redis.set(keys.USERCOM.limiter_tat, early)
        granted = take(lim)
        after = float(redis.get(keys.USERCOM.limiter_tat))
        assert (after > early) if granted else (after == early)


def test_a_lane_below_live_books_only_its_next_slot(redis: Redis) -> None:
    """Backfill never fills the schedule ahead: a live call waits behind one of its slots at most."""
    below = RateLimiter(redis, LimitConfig(10, 1, 100), sleep=1.0, destination_keys=keys.USERCOM, below_live=True)
    furthest = [0.0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            # One transaction: Redis' clock and the schedule at the same instant (read apart, a watcher
            # descheduled between the two saw bookings made meanwhile as a schedule far ahead).
            pipe = redis.pipeline(transaction=True)
            (seconds, micros), tat = pipe.time().get(keys.USERCOM.limiter_tat_below_live).execute()
            furthest[0] = max(furthest[0], float(tat or 0) - (seconds * 1000 + micros / 1000))

    def call() -> None:
        for _ in range(2):
            with below.slot():
                pass

    watcher = threading.Thread(target=watch)
    watcher.start()
    callers = [threading.Thread(target=call) for _ in range(4)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=60)
    done.set()
    watcher.join()
    assert redis.zcard(keys.USERCOM.limiter_window) == 8  # every call had its slot
    # the booked slot plus one interval (the GCRA's next arrival): never a queue of slots
    assert furthest[0] <= 2 * 100 + 5


def test_a_lane_below_live_leaves_a_share_of_every_second_to_live_calls(redis: Redis) -> None:
    below = RateLimiter(redis, LimitConfig(10, 10, 100), sleep=1.0, destination_keys=keys.USERCOM, below_live=True)
    booked: list[float] = []
    for _ in range(9):
        with below.slot():
            booked.append(newest_slot(redis))
    # 8 of the 10 slots a second at most (no burst either): the 9th after a slot is a second later
    for earlier, later in zip(booked, booked[8:], strict=False):
        assert later - earlier >= 1000 + JITTER_MS
    live = limiter(redis, rate=10, burst=2, sleep=0.0)  # raises Throttled on any wait
    for _ in range(2):  # the two slots left: at once
        with live.slot():
            pass


def test_a_live_call_never_waits_behind_the_spacing_of_a_lane_below_live(redis: Redis) -> None:
    """At a burst of 1 a backfill call used to push the next live call an interval (100 ms) back;
    live calls follow their own spacing, and the backfill follows theirs."""
    below = RateLimiter(redis, LimitConfig(10, 1, 100), sleep=1.0, destination_keys=keys.USERCOM, below_live=True)
    live = limiter(redis, rate=10, burst=1, sleep=0.0)  # raises Throttled on any wait
    for _ in range(3):
        with below.slot():
            pass
        with live.slot():  # right after a backfill call: at once
            pass
        live_slot = newest_slot(redis)
        assert not take(live)  # live calls keep their own spacing
        with below.slot():  # the backfill's next call comes an interval after the live one
            pass
        assert newest_slot(redis) >= live_slot + 100


def test_below_one_call_a_second_both_lanes_together_keep_the_rate(redis: Redis) -> None:
    """At 0.5/s (a rate AIMD lowered) the one-second window let a live call follow a backfill call
    at once, and the two lanes together sent more than the rate; the window is 1 / rate wide then."""
    below = RateLimiter(redis, LimitConfig(0.5, 1, 100), sleep=5.0, destination_keys=keys.USERCOM, below_live=True)
    live = limiter(redis, rate=0.5, burst=1, sleep=0.0)
    with below.slot():
        pass
    with pytest.raises(Throttled) as caught, live.slot():
        pass
    assert caught.value.wait >= 2.0  # the backfill's slot + 1 / rate (+ jitter)


def test_slots_redis_lost_before_their_release_go_with_the_next_booking(tmp_path: Any) -> None:
    """Redis restarted (its append-only file keeps the calls in flight) while a delivery's slots were to
    be released: they were held for their whole lease (30 s), and ten of them stopped every worker."""
    server = RedisProcess(tmp_path / "redis").start()
    try:
        redis = Redis.from_url(server.url, socket_timeout=5)
        lim = limiter(redis, rate=100, burst=10, in_flight=10)
        with pytest.raises(RedisError), lim.released_later():  # the slot, then Redis lost
            with lim.slot():  # the call is made; its slot stays held until the block ends
                pass
            server.stop()  # SIGTERM: Redis writes its append-only file
        server.start()  # same port, same files
        assert redis.zcard(keys.USERCOM.limiter_in_flight) == 1  # still counted in flight
        in_flight: list[int] = []

        def call() -> None:  # another thread's (the one that held the slot may be gone)
            with lim.slot():
                in_flight.append(redis.zcard(keys.USERCOM.limiter_in_flight))

        other = threading.Thread(target=call)
        other.start()
        other.join(30)
        assert in_flight == [1]  # its own only: its booking released the slot left behind
        assert redis.zcard(keys.USERCOM.limiter_in_flight) == 0
    finally:
        server.stop()
