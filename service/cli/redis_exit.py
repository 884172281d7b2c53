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

EXIT_UNREACHABLE = 1


def redis_address(redis: Redis) -> str:
    """`host:port` (or the unix socket's path) of a client: no user name, no password."""
    kwargs = redis.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return str(kwargs["path"])
    host = str(kwargs.get("host", "localhost"))
    return f"[{host}]:{kwargs.get('port', 6379)}" if ":" in host else f"{host}:{kwargs.get('port', 6379)}"


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
