"""Dedup memory that stays small: each accepted event id as a 64-bit integer digest in a Redis set per time
bucket and shard (`relay:dedup:<source>:b<bucket>:<shard hex>`, keys.dedup_shard). Integers in a set of at
most 512 members (Redis' set-max-intset-entries default) are kept as an intset: 8 bytes each, sorted, no
per-member allocation, instead of ~70 B each in a hashtable set of 8-byte strings. SHARDS_PER_BUCKET = 1024
shards keep a bucket compact up to ~500 k ids (past 512 a shard becomes a hashtable set: what every id cost
before); a shard's key costs ~100 B, so a bucket of n ids costs about 8 n + 100 min(n, 1024) bytes.

A bucket lives RELAY_DEDUP_TTL_SECONDS after it closes, and intake checks every bucket that can still hold
an id accepted within the TTL, so a repeat is refused for at least the TTL (at most one bucket longer).
About 24 buckets cover the TTL.

False positives (a new event refused as a repeat) need two ids with the same shard (10 bits) and the same
64-bit member: 74 bits of blake2b. Among n ids within one window, any such collision has probability about
n^2 / 2^75: ~3e-9 for 10 M ids, ~3e-5 for 1 G ids.

Kept from before this layout, and still checked until they expire: per-id keys (`relay:dedup:<source>:<event
id>`, keys.dedup) and per-bucket sets of 8-byte string digests (`relay:dedup:<source>:b<bucket>`). The first
sharded write records which buckets can hold those sets (keys.dedup_shards_since, "<first> <last>"): the TTL's
window if it finds any there, else only its own bucket; and the next one in both cases (pods not yet upgraded
keep writing them during a rolling upgrade, which must end within a bucket: >= 1 hour). So a fresh install, and
every install once the TTL has passed, reads 25 sets per accept, not 50.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

from redis import Redis

from service.store import keys

BUCKETS_PER_TTL = 24
MIN_BUCKET_SECONDS = 3600
SHARDS_PER_BUCKET = 1024  # a power of two: the shard is the digest's top 10 bits


@dataclass(frozen=True)
class DedupCheck:
    """The KEYS and ARGV of DEDUP_LUA's first_seen for one event."""

    bucket_key: str  # the shard of the current bucket the id goes to
    legacy_key: str
    since_key: str
    prefix: str
    legacy_digest: bytes  # the 8-byte digest of the per-bucket sets from before the shards
    bucket: int
    count: int
    expire_at: int
    shard: int
    member: int

    def script_keys(self) -> list[str]:
        return [self.bucket_key, self.legacy_key, self.since_key]

    def script_args(self) -> list[str | bytes | int]:
        shard = f"{self.shard:x}"
        return [self.prefix, self.legacy_digest, self.bucket, self.count, self.expire_at, shard, self.member]

    def bucket_keys(self, since: bytes | None) -> list[tuple[str, bytes | int]]:
        """Every (set, member) that holds the id if it was accepted within the TTL, both layouts (`since`: the
        value of since_key)."""
        first, last = (int(n) for n in since.split()) if since else (self.bucket - self.count + 1, self.bucket)
        out: list[tuple[str, bytes | int]] = []
        for bucket in range(self.bucket - self.count + 1, self.bucket + 1):
            out.append((f"{self.prefix}{bucket}:{self.shard:x}", self.member))
            if first <= bucket <= last:
                out.append((f"{self.prefix}{bucket}", self.legacy_digest))
        return out


def bucket_seconds(ttl: int) -> int:
    return max(MIN_BUCKET_SECONDS, math.ceil(ttl / BUCKETS_PER_TTL))


def shard_and_member(event_id: str) -> tuple[int, int]:
    """The id's shard (top 10 bits of a 10-byte blake2b) and member (the other 64 bits, as a signed
    integer: what an intset stores)."""
    digest = hashlib.blake2b(event_id.encode(), digest_size=10).digest()
    top = int.from_bytes(digest[:2], "big")
    return top * SHARDS_PER_BUCKET >> 16, int.from_bytes(digest[2:], "big", signed=True)


def dedup_check(source: str, event_id: str, ttl: int, now: float) -> DedupCheck:
    width = bucket_seconds(ttl)
    bucket = int(now // width)
    shard, member = shard_and_member(event_id)
    return DedupCheck(
        bucket_key=keys.dedup_shard(source, bucket, shard),
        legacy_key=keys.dedup(source, event_id),
        since_key=keys.dedup_shards_since(source),
        prefix=keys.dedup_bucket_prefix(source),
        legacy_digest=hashlib.blake2b(event_id.encode(), digest_size=8).digest(),
        bucket=bucket,
        count=math.ceil(ttl / width) + 1,
        expire_at=(bucket + 1) * width + ttl,
        shard=shard,
        member=member,
    )


# True the first time an event id is seen within the TTL: its member is added to its shard of the current
# bucket. (bucket_key, legacy_key, since_key, prefix, legacy_digest, bucket, count, expire_at, shard, member)
DEDUP_LUA = """
-- Whether the event id was accepted within the TTL (either layout), without remembering it.
local function seen(legacy_key, since_key, prefix, legacy_digest, bucket, count, shard, member)
    if redis.call('EXISTS', legacy_key) == 1 then return true end
    local last = tonumber(bucket)
    local first = last - tonumber(count) + 1
    local since = redis.call('GET', since_key)
    local legacy_first, legacy_last = first, last
    if since then
        legacy_first, legacy_last = string.match(since, '^(.-) (.-)$')
        legacy_first, legacy_last = tonumber(legacy_first), tonumber(legacy_last)
    end
    for b = first, last do
        if redis.call('SISMEMBER', prefix .. b .. ':' .. shard, member) == 1 then return true end
        if b >= legacy_first and b <= legacy_last and redis.call('SISMEMBER', prefix .. b, legacy_digest) == 1 then
            return true
        end
    end
    return false
end
-- On the first sharded write: the buckets that can hold per-bucket digest sets of before ("<first> <last>").
local function record_since(since_key, prefix, bucket, count)
    if redis.call('EXISTS', since_key) == 1 then return end
    local last = tonumber(bucket)
    local first = last
    for b = last - tonumber(count) + 1, last do
        if redis.call('EXISTS', prefix .. b) == 1 then first = last - tonumber(count) + 1 end
    end
    redis.call('SET', since_key, first .. ' ' .. (last + 1))  -- no percent signs: ACCEPT_JOB_SCRIPT is formatted
end
local function first_seen(bucket_key, legacy_key, since_key, prefix, legacy_digest, bucket, count, expire_at, shard,
                          member)
    if seen(legacy_key, since_key, prefix, legacy_digest, bucket, count, shard, member) then return false end
    redis.call('SADD', bucket_key, member)
    redis.call('EXPIREAT', bucket_key, expire_at)
    record_since(since_key, prefix, bucket, count)
    return true
end
"""


def ignored_namespace(source: str) -> str:
    """Where the ids of a source's ignored events are remembered (Store.ignore), apart from the accepted ones:
    once a new mapping uses their type, a backfill or a redelivery is accepted. `!` is in no event id."""
    return f"{source}!ignored"


def accepted_before(redis: Redis, source: str, event_ids: list[str], ttl: int, now: float | None = None) -> list[bool]:
    """Whether each event id is in the dedup memory (read only, one round trip): what reconcile and
    a backfill's dry run ask, the same question the accept script's `seen` answers."""
    now = time.time() if now is None else now
    since = redis.get(keys.dedup_shards_since(source))
    pipe = redis.pipeline(transaction=False)
    widths = []
    for event_id in event_ids:
        check = dedup_check(source, event_id, ttl, now)
        pipe.exists(check.legacy_key)
        reads = check.bucket_keys(since)
        for key, member in reads:
            pipe.sismember(key, member)
        widths.append(1 + len(reads))
    answers = pipe.execute()
    out, at = [], 0
    for width in widths:
        out.append(any(answers[at : at + width]))
        at += width
    return out
