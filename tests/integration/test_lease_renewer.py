"""One thread per worker process renews every user lease it holds (workers/lease_renewer.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from service.devtools.embedded_redis import RedisProcess
from service.store import keys
from workers.ordering import LEASE_MS, Ordering


def an_ordering(redis: Redis) -> Ordering:
    return Ordering(redis, memory_ttl_seconds=60, destination_keys=keys.USERCOM)


def test_one_renewal_extends_every_lease_still_ours_and_drops_the_lost(redis: Redis) -> None:
    renewer = an_ordering(redis).renewer
    redis.set("lock:a", "token-a", px=500)
    redis.set("lock:b", "someone-else", px=500)  # taken over: not ours to extend
    renewer.add("lock:a", "token-a", renewer.clock())
    renewer.add("lock:b", "token-b", renewer.clock())
    renewer.renew_now()
    assert redis.pttl("lock:a") > 500
    assert redis.pttl("lock:b") <= 500
    assert renewer.held() == {"lock:a": "token-a"}


def test_a_hold_registers_its_lease_until_the_block_ends(redis: Redis) -> None:
    ordering = an_ordering(redis)
    lock = keys.USERCOM.user_lock("u1")
    threads_before = threading.active_count()
    with ordering.hold("stripe", "u:u1", "u1") as hold:
        assert ordering.renewer.held() == {lock: hold._token}
        redis.pexpire(lock, 100)
        ordering.renewer.renew_now()
        assert redis.pttl(lock) > LEASE_MS / 2
        with ordering.hold("stripe", "u:u2", "u2"):
            assert len(ordering.renewer.held()) == 2
    assert ordering.renewer.held() == {}
    assert redis.get(lock) is None
    assert threading.active_count() <= threads_before + 1  # the one renewer, not one per hold


def test_a_lease_not_renewed_for_two_thirds_of_it_is_no_longer_fresh(redis: Redis) -> None:
    """What a delivery checks before each call: a lease taken or renewed a while ago may lapse before
    the call is through (the process was paused, or renewals failed)."""
    now = [100.0]
    renewer = an_ordering(redis).renewer
    renewer.clock = lambda: now[0]
    renewer.interval = 3600  # no tick of the thread's own during the test
    redis.set("lock:a", "token-a", px=LEASE_MS)
    renewer.add("lock:a", "token-a", since=now[0])
    now[0] += LEASE_MS / 1000 * 0.6
    assert renewer.fresh("lock:a", "token-a")
    assert not renewer.fresh("lock:a", "token-b")  # not our token
    now[0] += LEASE_MS / 1000 * 0.1
    assert not renewer.fresh("lock:a", "token-a")
    renewer.renew_now()  # known to run its length again from the time the renewal was sent
    assert renewer.fresh("lock:a", "token-a")
    redis.set("lock:a", "someone-else", px=LEASE_MS)
    renewer.renew_now()
    assert not renewer.fresh("lock:a", "token-a")


def test_leases_let_go_while_redis_is_gone_are_renewed_no_more(tmp_path: Path) -> None:
    """A release that fails must not leave the group's other leases renewed for as long as the worker
    runs: their users would stay locked after Redis came back."""
    server = RedisProcess(tmp_path / "redis").start()
    try:
        redis = Redis.from_url(server.url, socket_timeout=2)
        ordering = an_ordering(redis)
        holds = ordering.take_many([("stripe", f"u:{u}", u, None) for u in ("u1", "u2", "u3")])
        assert all(holds) and len(ordering.renewer.held()) == 3
        server.stop()
        with pytest.raises(RedisConnectionError):
            ordering.let_go(holds)
        assert ordering.renewer.held() == {}
    finally:
        server.stop()


def test_a_user_state_that_cannot_be_read_leaves_no_lease_renewed(redis: Redis) -> None:
    """take_many fails on the second user's state: the first user's lease is let go, not renewed for good."""
    ordering = an_ordering(redis)
    redis.hset(keys.USERCOM.user_state("stripe", "u:u2"), mapping={"e:evt_1": "{not json"})
    with pytest.raises(ValueError):
        ordering.take_many([("stripe", f"u:{u}", u, None) for u in ("u1", "u2")])
    assert ordering.renewer.held() == {}
    assert redis.get(keys.USERCOM.user_lock("u1")) is None
