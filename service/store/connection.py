"""Redis connections with explicit timeouts."""

from __future__ import annotations

from redis import Redis
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry

# The web answers 503 within about a second when Redis is gone: short timeouts, no retry.
WEB_SOCKET_TIMEOUT = 0.5
# Workers can wait longer; rq raises socket_timeout itself for its blocking pops.
WORKER_SOCKET_TIMEOUT = 10.0
# redis-py 8 sends CLIENT MAINT_NOTIFICATIONS (a Redis Enterprise / 8.x command) on every connect:
# off, so that an ACL user limited to the relay's commands (deploy/redis/users.acl) is never denied.
NO_MAINT_NOTIFICATIONS = MaintNotificationsConfig(enabled=False)


def web_redis(url: str) -> Redis:
    return Redis.from_url(
        url,
        socket_timeout=WEB_SOCKET_TIMEOUT,
        socket_connect_timeout=WEB_SOCKET_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        maint_notifications_config=NO_MAINT_NOTIFICATIONS,
    )


def worker_redis(url: str) -> Redis:
    return Redis.from_url(
        url,
        socket_timeout=WORKER_SOCKET_TIMEOUT,
        socket_connect_timeout=5.0,
        maint_notifications_config=NO_MAINT_NOTIFICATIONS,
    )
