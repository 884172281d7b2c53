"""Scripts sent together in one round trip (workers/scripts_at_once.py), and the call slot booked
along with a delivery's claim (RateLimiter.booking)."""

from __future__ import annotations

from redis import Redis

from service.store import keys
from workers.ratelimit import LimitConfig, RateLimiter, Throttled
from workers.scripts_at_once import ScriptCall, run_at_once

ECHO = "return {KEYS[1], ARGV[1]}"
INCR = "return redis.call('INCR', KEYS[1])"


def limiter(redis: Redis, rate: float = 1000, burst: int = 100) -> RateLimiter:
    return RateLimiter(redis, LimitConfig(rate, burst, 100), sleep=0.0, destination_keys=keys.USERCOM)


def test_scripts_redis_does_not_know_are_loaded_and_each_runs_once(redis: Redis) -> None:
    echo, incr = redis.register_script(ECHO), redis.register_script(INCR)
    redis.script_load(INCR)
    redis.script_flush()  # a restarted Redis: neither is known
    answers = run_at_once(redis, [ScriptCall(incr, ["n"], []), ScriptCall(echo, ["k"], ["v"])])
    assert answers == [1, [b"k", b"v"]]
    assert run_at_once(redis, [ScriptCall(incr, ["n"], []), ScriptCall(incr, ["n"], [])]) == [2, 3]
    assert redis.get("n") == b"3"


def test_a_slot_booked_with_the_claim_is_the_one_the_call_uses(redis: Redis) -> None:
    lim = limiter(redis)
    in_flight = keys.USERCOM.limiter_in_flight
    with lim.released_later() as held:
        booking = lim.booking()
        [answer] = run_at_once(redis, [booking])
        lim.booked(booking, answer)
        with lim.slot():
            assert redis.zcard(in_flight) == 1  # not a second booking
        assert len(held) == 1
    assert redis.zcard(in_flight) == 0


def test_a_slot_booked_for_a_call_that_never_comes_is_released_with_the_delivery(redis: Redis) -> None:
    lim = limiter(redis)
    with lim.released_later():
        booking = lim.booking()
        lim.booked(booking, run_at_once(redis, [booking])[0])
        assert redis.zcard(keys.USERCOM.limiter_in_flight) == 1
    assert redis.zcard(keys.USERCOM.limiter_in_flight) == 0
    with lim.slot():  # and the next delivery books its own
        assert redis.zcard(keys.USERCOM.limiter_in_flight) == 1


def test_a_booking_refused_leaves_the_call_throttled(redis: Redis) -> None:
    lim = limiter(redis, rate=1, burst=1)
    with lim.slot():
        pass  # the one slot of this second
    with lim.released_later() as held:
        booking = lim.booking()
        lim.booked(booking, run_at_once(redis, [booking])[0])
        assert held == []
        try:
            with lim.slot():
                raise AssertionError("no slot this second")
        except Throttled as exc:
            assert exc.wait > 0
