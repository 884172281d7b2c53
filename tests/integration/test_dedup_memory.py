"""The dedup memory: a repeat is refused for the whole TTL, each id costs an 8-byte intset member (not a
~70 B hashtable entry), and what the previous layouts wrote is still refused after an upgrade."""

from __future__ import annotations

import hashlib

from redis import Redis

from service.store import keys
from service.store.ledger_dedup import DEDUP_LUA, accepted_before, bucket_seconds, dedup_check
from tests.conftest import an_update
from tests.integration.test_store import _store

TTL = 7 * 24 * 3600
NOW = 1_800_000_000.0


def _first_seen(redis: Redis, event_id: str, now: float, ttl: int = TTL) -> bool:
    """DEDUP_LUA's first_seen at any time (the scripts call it with time.time())."""
    script = redis.register_script(DEDUP_LUA + "return first_seen(KEYS[1], KEYS[2], KEYS[3], unpack(ARGV)) and 1 or 0")
    check = dedup_check("stripe", event_id, ttl, now)
    return bool(script(keys=check.script_keys(), args=check.script_args()))


def test_a_repeat_is_refused_for_the_whole_ttl_and_accepted_after_it(redis: Redis) -> None:
    assert _first_seen(redis, "evt_a", NOW)
    assert not _first_seen(redis, "evt_a", NOW)
    assert not _first_seen(redis, "evt_a", NOW + TTL - 1)  # many buckets later, still within the TTL
    assert accepted_before(redis, "stripe", ["evt_a", "evt_b"], TTL, now=NOW + TTL - 1) == [True, False]
    assert accepted_before(redis, "stripe", ["evt_a"], TTL, now=NOW + TTL + bucket_seconds(TTL) + 1) == [False]
    assert _first_seen(redis, "evt_a", NOW + TTL + bucket_seconds(TTL) + 1)


def test_each_id_costs_an_intset_member(redis: Redis) -> None:
    ids = [f"evt_1P{n:08d}abcdef" for n in range(20_000)]
    script = redis.register_script(DEDUP_LUA + "return first_seen(KEYS[1], KEYS[2], KEYS[3], unpack(ARGV)) and 1 or 0")
    pipe = redis.pipeline(transaction=False)
    for event_id in ids:
        check = dedup_check("stripe", event_id, TTL, NOW)
        script(keys=check.script_keys(), args=check.script_args(), client=pipe)
    assert all(pipe.execute())  # no false positive among 20,000 distinct ids
    shards = list(redis.scan_iter(match=keys.dedup_bucket_prefix("stripe") + "*", count=1000))
    assert 1000 <= len(shards) <= 1024
    assert {redis.object("encoding", key) for key in shards} == {b"intset"}
    total = sum(redis.memory_usage(key, samples=0) or 0 for key in shards)
    assert total / len(ids) < 30, f"{total / len(ids):.0f} B per id"  # a hashtable set of strings: ~70
    assert not any(_first_seen(redis, event_id, NOW + 3600) for event_id in ids[:100])


def test_ids_kept_by_the_previous_layouts_are_still_refused(redis: Redis) -> None:
    store = _store(redis)  # dedup_ttl=300_000
    check = dedup_check("stripe", "evt_old_bucket", store.dedup_ttl, NOW)
    old_bucket = f"{keys.dedup_bucket_prefix('stripe')}{check.bucket - 1}"  # a per-bucket set of 8-byte digests
    redis.sadd(old_bucket, hashlib.blake2b(b"evt_old_bucket", digest_size=8).digest())
    redis.set(keys.dedup("stripe", "evt_old_key"), "1")  # a per-id key
    assert accepted_before(redis, "stripe", ["evt_old_bucket", "evt_old_key", "evt_new"], store.dedup_ttl, NOW) == [
        True,
        True,
        False,
    ]
    assert not _first_seen(redis, "evt_old_bucket", NOW, store.dedup_ttl)
    assert not _first_seen(redis, "evt_old_key", NOW, store.dedup_ttl)
    assert store.accept(an_update(event_id="evt_fresh"))
    assert not store.accept(an_update(event_id="evt_fresh"))


def test_a_fresh_install_reads_the_previous_layout_only_in_the_first_sharded_bucket_and_the_next(
    redis: Redis,
) -> None:
    check = dedup_check("stripe", "evt_first", TTL, NOW)
    assert _first_seen(redis, "evt_first", NOW)
    assert redis.get(keys.dedup_shards_since("stripe")) == f"{check.bucket} {check.bucket + 1}".encode()  # none before
    for n, bucket in enumerate((check.bucket, check.bucket + 1, check.bucket + 2)):  # written by a pod not yet upgraded
        digest = hashlib.blake2b(f"evt_old_{n}".encode(), digest_size=8).digest()
        redis.sadd(f"{keys.dedup_bucket_prefix('stripe')}{bucket}", digest)
    later = NOW + 2 * bucket_seconds(TTL)
    ids = ["evt_old_0", "evt_old_1", "evt_old_2"]
    assert accepted_before(redis, "stripe", ids, TTL, now=later) == [True, True, False]
    assert [_first_seen(redis, event_id, later) for event_id in ids] == [False, False, True]


def test_an_upgraded_install_reads_the_previous_layout_for_the_whole_ttl(redis: Redis) -> None:
    check = dedup_check("stripe", "evt_new", TTL, NOW)
    old = f"{keys.dedup_bucket_prefix('stripe')}{check.bucket - 20}"
    redis.sadd(old, hashlib.blake2b(b"evt_old", digest_size=8).digest())
    assert _first_seen(redis, "evt_new", NOW)
    first = check.bucket - check.count + 1
    assert redis.get(keys.dedup_shards_since("stripe")) == f"{first} {check.bucket + 1}".encode()
    assert accepted_before(redis, "stripe", ["evt_old"], TTL, now=NOW) == [True]
    assert not _first_seen(redis, "evt_old", NOW)
