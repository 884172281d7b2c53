"""Dedup memory that stays small: the 8-byte digest of each accepted event id, in one Redis set per
time bucket and source (`relay:dedup:<source>:b<bucket>`). A bucket lives RELAY_DEDUP_TTL_SECONDS after
it closes, and intake checks every bucket that can still hold an id accepted within the TTL, so a
repeat is refused for at least the TTL (at most one bucket longer). About 24 buckets cover the TTL.

8 bytes: two different ids collide with probability n^2 / 2^65 — for 10 M ids in a window, ~3e-6.
Keys written before the upgrade (`relay:dedup:<source>:<event id>`) are still checked.
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


@dataclass(frozen=True)
class DedupCheck:
    """The KEYS and ARGV of DEDUP_LUA's first_seen for one event."""

    bucket_key: str
    legacy_key: str
    prefix: str
    digest: bytes
    bucket: int
    count: int
    expire_at: int

    def script_keys(self) -> list[str]:
        return [self.bucket_key, self.legacy_key]

    def script_args(self) -> list[str | bytes | int]:
        return [self.prefix, self.digest, self.bucket, self.count, self.expire_at]


def bucket_seconds(ttl: int) -> int:
    return max(MIN_BUCKET_SECONDS, math.ceil(ttl / BUCKETS_PER_TTL))


def dedup_check(source: str, event_id: str, ttl: int, now: float) -> DedupCheck:
    width = bucket_seconds(ttl)
    bucket = int(now // width)
    prefix = keys.dedup_bucket_prefix(source)
    return DedupCheck(
        bucket_key=f"{prefix}{bucket}",
        legacy_key=keys.dedup(source, event_id),
        prefix=prefix,
        digest=hashlib.blake2b(event_id.encode(), digest_size=8).digest(),
        bucket=bucket,
        count=math.ceil(ttl / width) + 1,
        expire_at=(bucket + 1) * width + ttl,
    )


# True the first time an event id is seen within the TTL: its digest is added to the current bucket.
# (bucket_key, legacy_key, prefix, digest, bucket, count, expire_at) -> boolean
DEDUP_LUA = """
-- Whether the event id was accepted within the TTL, without remembering it.
local function seen(legacy_key, prefix, digest, bucket, count)
    if redis.call('EXISTS', legacy_key) == 1 then return true end
    for b = tonumber(bucket) - tonumber(count) + 1, tonumber(bucket) do
        if redis.call('SISMEMBER', prefix .. b, digest) == 1 then return true end
    end
    return false
end
local function first_seen(bucket_key, legacy_key, prefix, digest, bucket, count, expire_at)
    if seen(legacy_key, prefix, digest, tonumber(bucket) - 1, tonumber(count) - 1) then return false end
    if redis.call('SADD', bucket_key, digest) == 0 then return false end
    redis.call('EXPIREAT', bucket_key, expire_at)
    return true
end
"""


def accepted_before(redis: Redis, source: str, event_ids: list[str], ttl: int, now: float | None = None) -> list[bool]:
    """Whether each event id is in the dedup memory (read only, one round trip): what reconcile and
    a backfill's dry run ask, the same question the accept script's `seen` answers."""
    now = time.time() if now is None else now
    pipe = redis.pipeline(transaction=False)
    for event_id in event_ids:
        check = dedup_check(source, event_id, ttl, now)
        pipe.exists(check.legacy_key)
        for bucket in range(check.bucket - check.count + 1, check.bucket + 1):
            pipe.sismember(f"{check.prefix}{bucket}", check.digest)
    answers = pipe.execute()
    width = len(answers) // len(event_ids) if event_ids else 0  # the same number of reads per id
    return [any(answers[i * width : (i + 1) * width]) for i in range(len(event_ids))]
