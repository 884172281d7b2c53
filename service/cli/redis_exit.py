"""For commands that talk to Redis (`relay dlq`, `relay trace`): Redis down is one line and a
non-zero exit, never a traceback, and never the URL's password."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from redis import Redis
from redis.exceptions import AuthenticationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.store.sentinel_url import host_port

EXIT_UNREACHABLE = 1


def redis_address(redis: Redis) -> str:
    """`host:port`, the unix socket's path, or the sentinels and master name (REDIS_SENTINELS: the
    master's address is only known once they answer): no user name, no password."""
    kwargs = redis.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return str(kwargs["path"])
    if kwargs.get("sentinels"):
        sentinels = ",".join(host_port(host, port) for host, port in kwargs["sentinels"])
        return f"sentinels {sentinels} (master {kwargs['master_name']})"
    return host_port(str(kwargs.get("host", "localhost")), kwargs.get("port", 6379))


def problem(command: str, redis: Redis, exc: RedisError) -> str:
    where = redis_address(redis)
    if isinstance(exc, AuthenticationError):
        return f"{command}: redis at {where} refused the credentials in REDIS_URL"
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
        return f"{command}: redis is not reachable at {where}"
    return f"{command}: redis at {where} answered with an error ({type(exc).__name__})"


@contextmanager
def redis_or_exit(command: str, redis: Redis) -> Iterator[None]:
    """Run the block; a Redis failure prints one line on stderr and exits EXIT_UNREACHABLE."""
    try:
        yield
    except RedisError as exc:
        print(problem(command, redis, exc), file=sys.stderr)
        raise SystemExit(EXIT_UNREACHABLE) from None
    finally:
        redis.close()
