"""RELAY_DURABLE_ACK: when a 2xx may be answered to a webhook.

`off` (the default): once Redis has the write in memory. Its append-only file is fsynced by the
Redis policy (`appendfsync everysec` in deploy/): a Redis *process* kill loses nothing (the kernel
has the file), but a node or volume crash can lose the last ~1-2 s of writes, events already
answered 2xx that the provider never resends.

`fsync`: only once the write is on disk. Either Redis fsyncs before every reply
(`appendfsync always`: nothing to do per request), or, on Redis >= 7.2 (Valkey too), intake asks
with WAITAOF after its write. WAITAOF waits for the writes *of its own connection*, and the web's
pool hands any connection out: so the wait goes out on a connection of its own with a tiny write of
its own first; the AOF is fsynced in order, so that write on disk means intake's write is too.
WAITAOF answers [local, replicas] even on timeout: local 0 is not on disk, and intake answers 503
(the provider sends the event again; it is a duplicate then, answered once that is on disk).

A Redis that can do neither (AOF off, or Redis < 7.2 without `appendfsync always`) is refused at
start: one line naming RELAY_DURABLE_ACK, exit 2 (service/cli).

`replica`: only once a replica has the write (WAIT 1, on a connection of its own after a write of
its own, as above: the replication stream is in order too). A failover then promotes a replica that
has the answered events (Sentinel promotes the replica furthest along, best effort), where `off` and
`fsync` lose the last writes the dead master had not yet sent to a replica. No replica acknowledging
within the timeout is answered 503, so is everything while the master has no replica (a warning at
start). Keep two replicas or more: after a failover, the promoted one needs another replica before
it is answered 2xx again. What WAIT cannot cover (Redis' own caveats): a master that restarts from
its AOF before the sentinels fail over (node crash, `everysec`) and resyncs its replicas from what it
kept; a partition where intake still writes to the old master while the waiting connection already
reaches the new one (`min-replicas-to-write 1` with `min-replicas-max-lag` bounds how long).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from redis import Redis
from redis.exceptions import RedisError, ResponseError

from service.store import keys
from service.store.connection import waiting_redis
from service.store.sentinel_url import parse_sentinel_url

# How long intake waits for the fsync before answering 503; `everysec` fsyncs about once a second.
WAITAOF_TIMEOUT_MS = 2000
ALWAYS_RECHECK_SECONDS = 10.0  # see DurableAck.recheck_seconds
# WAITAOF appeared in Redis 7.2 (Valkey reports redis_version 7.2.4 and has it).
WAITAOF_SINCE = (7, 2)
ALWAYS = "always"  # Redis fsyncs before replying: nothing to do per request
WAITAOF = "waitaof"
OFF, FSYNC, REPLICA = "off", "fsync", "replica"  # RELAY_DURABLE_ACK's values
ACK_MARKER = f"{keys.PREFIX}:durable_ack"  # the waiting connection's own write (a counter)


class DurabilityRefused(Exception):
    """This Redis cannot honour RELAY_DURABLE_ACK (no disk, or no replica, before the answer): the message says why."""


class NotDurable(RedisError):
    """The wait timed out: the event is in Redis but not yet on disk (or on a replica); intake answers 503."""


class NotHonoured(NotDurable):
    """The Redis in use cannot honour the mode at all (found after start: it was unreachable then, or
    its persistence changed since): intake answers 503 and /readyz fails until it can."""


def cannot_honour(wanted: str, why: Exception) -> str:
    """The one line saying this Redis cannot honour RELAY_DURABLE_ACK=`wanted`, and why."""
    return f"RELAY_DURABLE_ACK={wanted} cannot be honoured: {why}"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


def fsync_mode(redis: Redis) -> str:
    """How this Redis can honour RELAY_DURABLE_ACK=fsync: ALWAYS or WAITAOF; raises DurabilityRefused."""
    persistence = redis.info("persistence")
    if not int(persistence.get("aof_enabled", 0)):
        raise DurabilityRefused("Redis has no append-only file (appendonly no): nothing is on disk per write")
    try:
        policy = str(redis.config_get("appendfsync").get("appendfsync", ""))
    except ResponseError:  # a managed Redis may forbid CONFIG
        policy = "unknown (CONFIG GET is refused)"
    if policy == ALWAYS:
        return ALWAYS
    version = str(redis.info("server").get("redis_version", "0"))
    if _version(version) >= WAITAOF_SINCE:
        return WAITAOF
    raise DurabilityRefused(
        f"Redis {version} has no WAITAOF (7.2+) and its appendfsync is {policy}: "
        "use Redis >= 7.2, or set appendfsync always"
    )


def failover_warning(url: str, wanted: str) -> str | None:
    """One line when the events answered last before a Sentinel failover may be lost (not `replica`)."""
    if wanted == REPLICA or parse_sentinel_url(url) is None:
        return None
    return (
        f"RELAY_DURABLE_ACK={wanted} with REDIS_SENTINELS: events answered just before a failover may be "
        "lost (replication is asynchronous); set RELAY_DURABLE_ACK=replica"
    )


def replica_mode(redis: Redis) -> str:
    """REPLICA when this Redis is a master; raises DurabilityRefused. A master without a replica for
    now (just after a failover) is not refused: its answers are 503 until one acknowledges."""
    role = redis.info("replication").get("role")
    if role != "master":
        raise DurabilityRefused(f"Redis is a {role}, not a master")
    return REPLICA


def mode_of(redis: Redis, wanted: str) -> str:
    """How this Redis honours RELAY_DURABLE_ACK=`wanted` (fsync or replica); raises DurabilityRefused."""
    if wanted == REPLICA:
        return replica_mode(redis)
    if wanted == FSYNC:
        return fsync_mode(redis)
    raise ValueError(f"RELAY_DURABLE_ACK={wanted!r} waits for nothing")


def check_at_start(url: str, wanted: str) -> tuple[str | None, str | None]:
    """For `relay web` and `relay check-config --connect`: (one line refusing RELAY_DURABLE_ACK=`wanted`,
    or None; one line of warning, or None: `replica` with no replica connected for now)."""
    redis = waiting_redis(url, 5)
    try:
        mode_of(redis, wanted)
        if wanted == REPLICA and not int(redis.info("replication").get("connected_slaves", 0)):
            return (
                None,
                "RELAY_DURABLE_ACK=replica: Redis has no replica connected; webhooks are answered 503 until one is",
            )
        return None, None
    except DurabilityRefused as exc:
        return cannot_honour(wanted, exc), None
    except RedisError as exc:  # unreachable for now: checked again at the first webhook (DurableAck)
        # A warning, not a refusal: a web pod started during a Redis outage (a rollout, a scale-up) would
        # otherwise exit and back off, and come back minutes after Redis does.
        return (
            None,
            f"RELAY_DURABLE_ACK={wanted}: Redis cannot be checked now ({type(exc).__name__}); "
            "webhooks are answered 503 until it can",
        )
    finally:
        redis.close()


def on_disk(answer: list[int] | tuple[int, ...]) -> bool:
    """WAITAOF 1 0 <timeout> answers [local fsynced, replicas fsynced], also on timeout."""
    return len(answer) == 2 and int(answer[0]) >= 1


@dataclass
class DurableAck:
    """Called by intake after its write, before it answers. `off`: nothing."""

    url: str | None  # None: RELAY_DURABLE_ACK=off
    wanted: str = FSYNC  # or REPLICA
    timeout_ms: int = WAITAOF_TIMEOUT_MS
    # `appendfsync always` needs no wait, so no round trip would notice another server answering
    # (a failover, with other persistence: redis-py reconnects silently): it is checked again so often.
    recheck_seconds: float = ALWAYS_RECHECK_SECONDS
    _mode: str | None = field(default=None, init=False)
    _found_at: float = field(default=0.0, init=False)
    _redis: Redis | None = field(default=None, init=False, repr=False)

    def wait(self) -> None:
        if self.url is None:
            return
        if self._mode == ALWAYS and time.monotonic() - self._found_at > self.recheck_seconds:
            self._mode = None  # found again now
        redis = self._connection()
        if self._mode == ALWAYS:
            return
        pipe = redis.pipeline(transaction=False)  # one connection: its own write, then the wait
        pipe.incr(ACK_MARKER)
        wait = ("WAITAOF", 1, 0) if self._mode == WAITAOF else ("WAIT", 1)
        pipe.execute_command(*wait, self.timeout_ms)
        try:
            answer = pipe.execute()[1]
        except ResponseError as exc:  # e.g. WAITAOF with the AOF turned off since: found again next time
            self._mode = None
            raise NotHonoured(cannot_honour(self.wanted, exc)) from None
        if self._mode == WAITAOF and not on_disk(answer):
            raise NotDurable(f"not fsynced within {self.timeout_ms} ms (WAITAOF)")
        if self._mode == REPLICA and int(answer) < 1:
            raise NotDurable(f"no replica acknowledged within {self.timeout_ms} ms (WAIT)")

    def check(self) -> None:
        """For /readyz: raises NotHonoured when the Redis in use cannot honour the mode (found now, if
        not found yet), or a RedisError when it cannot be reached."""
        if self.url is not None:
            self._connection()

    def _connection(self) -> Redis:
        """The mode is found on first use (the start-up check told the operator), and again when found
        `appendfsync always` that long ago. No lock: under `relay web`'s gevent workers, a lock held
        across these Redis calls (one made before gunicorn's monkey-patching is a real one) stopped
        every other request of the process; requests at once may each find the mode, to the same end."""
        redis = self._redis
        if redis is None:  # no I/O yet: two requests at once may make one client each, one is kept
            redis = self._redis = waiting_redis(str(self.url), self.timeout_ms / 1000 + 2)  # beyond the wait's
        if self._mode is None:
            try:
                mode = mode_of(redis, self.wanted)
            except DurabilityRefused as exc:
                raise NotHonoured(cannot_honour(self.wanted, exc)) from None
            self._mode, self._found_at = mode, time.monotonic()
        return redis
