"""One thread per worker process renews every user lease it holds (workers/lease_renewer.py)."""

from __future__ import annotations

import threading

from redis import Redis

from service.store import keys
from workers.ordering import LEASE_MS, Ordering


def an_ordering(redis: Redis) -> Ordering:
    return Ordering(redis, memory_ttl_seconds=60, destination_keys=keys.USERCOM)


def test_one_renewal_extends_every_lease_still_ours_and_drops_the_lost(redis: Redis) -> None:
    renewer = an_ordering(redis).renewer
    redis.set("lock:a", "token-a", px=500)
    redis.set("lock:b", "someone-else", px=500)  # taken over: not ours to extend
    renewer.add("lock:a", "token-a")
    renewer.add("lock:b", "token-b")
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
