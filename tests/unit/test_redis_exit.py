"""How a Redis failure is told in one line: where (never the password), and what kind."""

from __future__ import annotations

from redis import Redis
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from service.cli.redis_exit import problem, redis_address


def test_the_address_never_carries_credentials() -> None:
    assert redis_address(Redis.from_url("redis://user:secret@cache.internal:6390/2")) == "cache.internal:6390"
    assert redis_address(Redis.from_url("rediss://:secret@[::1]/0")) == "[::1]:6379"
    assert redis_address(Redis.from_url("unix:///run/redis.sock?db=1")) == "/run/redis.sock"


def test_each_kind_of_failure_has_its_line() -> None:
    redis = Redis.from_url("redis://:secret@10.0.0.5:6379/0")
    assert (
        problem("relay dlq", redis, RedisConnectionError("x")) == "relay dlq: redis is not reachable at 10.0.0.5:6379"
    )
    assert problem("relay dlq", redis, AuthenticationError("x")).endswith("refused the credentials in REDIS_URL")
    assert problem("relay trace", redis, ResponseError("secret")) == (
        "relay trace: redis at 10.0.0.5:6379 answered with an error (ResponseError)"
    )
