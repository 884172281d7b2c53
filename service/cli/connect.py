"""`relay check-config --connect`: reach Redis and each configured destination once, without
sending any data, and say in one line each whether it answered."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

import urllib3
from redis.exceptions import RedisError

from service.config import Settings
from service.store.connection import probe_redis
from service.store.durability import OFF, check_at_start

CONNECT_TIMEOUT_SECONDS = 5.0


def check_redis(url: str) -> str | None:
    """None when Redis answers PING, else why not (never the URL: it may carry a password)."""
    client = probe_redis(url, CONNECT_TIMEOUT_SECONDS)
    try:
        client.ping()
        return None
    except RedisError as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    finally:
        client.close()


def check_http(url: str, connect_timeout: float, read_timeout: float) -> tuple[int | None, str | None]:
    """(status, None) once the host answered a HEAD (DNS, TCP and TLS done), else (None, why)."""
    pool = urllib3.PoolManager(timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout), retries=False)
    try:
        response = pool.request("HEAD", url, redirect=False)
        return response.status, None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return None, f"{type(reason).__name__}: {' '.join(str(reason).split())[:200]}"
    finally:
        pool.clear()


def check_all(settings: Settings, say: Callable[[str], None]) -> bool:
    """One line per dependency; True when every one answered."""
    ok = True
    problem = check_redis(settings.redis_url)
    say(f"  redis: {'reachable' if problem is None else f'UNREACHABLE ({problem})'}")
    ok = ok and problem is None
    if problem is None and settings.durable_ack != OFF:
        refusal, warning = check_at_start(settings.redis_url, settings.durable_ack)
        say(f"  durable ack: {'honoured' if refusal is None else f'NOT HONOURED ({refusal})'}")
        if refusal is None and warning:
            say(f"  durable ack: warning: {warning}")
        ok = ok and refusal is None
    for name in settings.destinations:
        destination = settings.destination(name)
        if not destination.api_url:
            say(f"  {name}: not checked (no URL set)")
            continue
        status, why = check_http(destination.api_url, destination.connect_timeout, destination.read_timeout)
        say(f"  {name}: {f'reachable (HTTP {status} to HEAD)' if why is None else f'UNREACHABLE ({why})'}")
        ok = ok and why is None
    return ok


def address_in_use(host: str, port: int) -> bool:
    """Whether another process already listens on host:port, as a server binding it (SO_REUSEADDR: a port
    left in TIME_WAIT is free) would find; port 0 (any free one) never is."""
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False
