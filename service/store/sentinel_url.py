"""The Redis Sentinel target as one URL: `redis+sentinel://[user:password@]host:port,.../db?master=name`
(and `&sentinel_password=...`). Settings fold REDIS_SENTINELS & co. into it (service/config/sentinel.py)
so that every connection is still made from `Settings.redis_url` (service/store/connection.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote, urlencode

SCHEME = "redis+sentinel"
MAX_SENTINELS = 16
_HOST = re.compile(r"[A-Za-z0-9._-]{1,253}|\[[0-9A-Fa-f:.]+\]")


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: tuple[tuple[str, int], ...]
    master: str
    username: str | None = None
    password: str | None = None
    db: int = 0
    sentinel_password: str | None = None


def host_ports(raw: str) -> tuple[tuple[str, int], ...]:
    """'host:port,host:port' -> ((host, port), ...); ValueError naming the first bad entry."""
    found = []
    for entry in raw.split(","):
        host, _, port = entry.strip().rpartition(":")
        if not _HOST.fullmatch(host) or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ValueError(f"must be a comma-separated list of host:port, got {entry.strip()[:60]!r}")
        found.append((host.strip("[]"), int(port)))
    if len(found) > MAX_SENTINELS:
        raise ValueError(f"lists more than {MAX_SENTINELS} sentinels")
    return tuple(found)


def host_port(host: str, port: int) -> str:
    """`host:port`, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def sentinel_url(target: SentinelTarget) -> str:
    auth = ""
    if target.password is not None:
        auth = f"{quote(target.username or '', safe='')}:{quote(target.password, safe='')}@"
    hosts = ",".join(host_port(h, p) for h, p in target.sentinels)
    query = {"master": target.master}
    if target.sentinel_password:
        query["sentinel_password"] = target.sentinel_password
    return f"{SCHEME}://{auth}{hosts}/{target.db}?{urlencode(query)}"


def parse_sentinel_url(url: str) -> SentinelTarget | None:
    """The target of a sentinel URL; None for any other URL."""
    if not url.startswith(f"{SCHEME}://"):
        return None
    netloc, _, tail = url[len(SCHEME) + 3 :].partition("/")
    auth, _, hosts = netloc.rpartition("@")
    username, _, password = auth.partition(":")
    path, _, query = tail.partition("?")
    params = {k: v[0] for k, v in parse_qs(query).items()}
    return SentinelTarget(
        sentinels=host_ports(hosts),
        master=params["master"],
        username=unquote(username) or None,
        password=unquote(password) if auth else None,
        db=int(path or 0),
        sentinel_password=params.get("sentinel_password"),
    )
