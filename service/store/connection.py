"""Redis connections with explicit timeouts: to REDIS_URL, or to the master the sentinels name."""

from __future__ import annotations

from typing import Any

from redis import ConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.connection import Connection
from redis.exceptions import ConnectionError, ReadOnlyError
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry
from redis.sentinel import Sentinel

from service.store.sentinel_url import parse_sentinel_url

# The web answers 503 within about a second when Redis is gone: short timeouts, no retry.
WEB_SOCKET_TIMEOUT = 0.5
# Workers can wait longer; rq raises socket_timeout itself for its blocking pops.
WORKER_SOCKET_TIMEOUT = 10.0
# redis-py 8 sends CLIENT MAINT_NOTIFICATIONS (a Redis Enterprise / 8.x command) on every connect:
# off, so that an ACL user limited to the relay's commands (deploy/redis/users.acl) is never denied.
NO_MAINT_NOTIFICATIONS = MaintNotificationsConfig(enabled=False)


class SentinelMasterConnection(Connection):
    """A connection to whichever server the sentinels name master, asked at every connect.

    A plain Connection with plain keyword arguments (not redis-py's SentinelConnectionPool): rq
    rebuilds its scheduler's connection from the pool's class and kwargs, and this survives that.
    A demoted master (READONLY after a failover) drops the connection so the next one asks again."""

    def __init__(
        self,
        *,
        sentinels: tuple[tuple[str, int], ...],
        master_name: str,
        sentinel_password: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.sentinels = sentinels
        self.master_name = master_name
        self.sentinel_password = sentinel_password
        super().__init__(**kwargs)

    def _connect(self) -> Any:
        timeout = self.socket_connect_timeout or WEB_SOCKET_TIMEOUT
        options = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "password": self.sentinel_password,
            "maint_notifications_config": NO_MAINT_NOTIFICATIONS,
            # One try per sentinel, then the next one: redis-py's default retries a sentinel that is down
            # with a growing backoff (4 s for one refused port) before asking the next.
            "retry": Retry(NoBackoff(), 0),
        }
        sentinel = Sentinel(list(self.sentinels), sentinel_kwargs=options)
        try:
            self.host, self.port = sentinel.discover_master(self.master_name)  # MasterNotFoundError: a ConnectionError
        finally:
            for client in sentinel.sentinels:
                client.close()
        return super()._connect()

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except ReadOnlyError:
            self.disconnect()
            raise ConnectionError("the master became a replica: reconnecting through the sentinels") from None


def _redis(url: str, **options: Any) -> Redis:
    target = parse_sentinel_url(url)
    if target is None:
        return Redis.from_url(url, maint_notifications_config=NO_MAINT_NOTIFICATIONS, **options)
    pool = ConnectionPool(
        connection_class=SentinelMasterConnection,
        sentinels=target.sentinels,
        master_name=target.master,
        sentinel_password=target.sentinel_password,
        username=target.username,
        password=target.password,
        db=target.db,
        maint_notifications_config=NO_MAINT_NOTIFICATIONS,
        **options,
    )
    return Redis(connection_pool=pool)


def web_redis(url: str) -> Redis:
    return _redis(
        url,
        socket_timeout=WEB_SOCKET_TIMEOUT,
        socket_connect_timeout=WEB_SOCKET_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


def probe_redis(url: str, timeout: float) -> Redis:
    """A client for one check (`relay check-config --connect`), through the sentinels if the URL names them."""
    return _redis(url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))


def waiting_redis(url: str, timeout: float) -> Redis:
    """A client whose calls may wait up to `timeout` (RELAY_DURABLE_ACK's WAIT / WAITAOF), through the
    sentinels if the URL names them."""
    return _redis(url, socket_timeout=timeout, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))


def worker_redis(url: str) -> Redis:
    return _redis(url, socket_timeout=WORKER_SOCKET_TIMEOUT, socket_connect_timeout=5.0)
