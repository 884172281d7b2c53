"""Redis Sentinel: REDIS_SENTINELS (host:port,host:port), REDIS_SENTINEL_MASTER (the name the
sentinels monitor), REDIS_SENTINEL_PASSWORD (the sentinels' own, optional). REDIS_URL is then
optional: when set, only its user, password and database are used (for the master).

The three fold into one URL, `redis+sentinel://[user:password@]host:port,.../db?master=name`, so
that every connection is still made from `Settings.redis_url` (service/store/connection.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from service.config.reader import Reader, SettingsError

SCHEME = "redis+sentinel"
MAX_SENTINELS = 16
_HOST = re.compile(r"[A-Za-z0-9._-]{1,253}|\[[0-9A-Fa-f:.]+\]")
_MASTER = re.compile(r"[A-Za-z0-9._-]{1,100}")


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: tuple[tuple[str, int], ...]
    master: str
    username: str | None = None
    password: str | None = None
    db: int = 0
    sentinel_password: str | None = None


def host_ports(name: str, raw: str) -> tuple[tuple[str, int], ...]:
    """'host:port,host:port' -> ((host, port), ...); a bad entry raises a one-line SettingsError."""
    found = []
    for entry in raw.split(","):
        host, _, port = entry.strip().rpartition(":")
        if not _HOST.fullmatch(host) or not port.isdigit() or not 0 < int(port) <= 65535:
            raise SettingsError(f"{name} must be a comma-separated list of host:port, got {entry.strip()[:60]!r}")
        found.append((host.strip("[]"), int(port)))
    if len(found) > MAX_SENTINELS:
        raise SettingsError(f"{name} lists more than {MAX_SENTINELS} sentinels")
    return tuple(found)


def redis_target(reader: Reader) -> str:
    """REDIS_URL, or the sentinel URL when REDIS_SENTINELS is set."""
    raw = reader.text("REDIS_SENTINELS", "")
    if not raw:
        return reader.redis_url("REDIS_URL")
    sentinels = host_ports("REDIS_SENTINELS", raw)
    master = reader.text("REDIS_SENTINEL_MASTER", "")
    if not _MASTER.fullmatch(master):
        raise SettingsError("REDIS_SENTINEL_MASTER is required with REDIS_SENTINELS: the master name they monitor")
    sentinel_password = reader.secret("REDIS_SENTINEL_PASSWORD", required=False) or None
    target = SentinelTarget(sentinels, master, sentinel_password=sentinel_password)
    if reader.text("REDIS_URL", ""):
        parts = urlsplit(reader.redis_url("REDIS_URL"))
        db = parts.path.strip("/") or "0"
        if not db.isdigit():
            raise SettingsError("REDIS_URL must end with a database number (/0) when REDIS_SENTINELS is set")
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        target = SentinelTarget(sentinels, master, username, password, int(db), target.sentinel_password)
    return sentinel_url(target)


def sentinel_url(target: SentinelTarget) -> str:
    auth = ""
    if target.password is not None:
        auth = f"{quote(target.username or '', safe='')}:{quote(target.password, safe='')}@"
    hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in target.sentinels)
    query = {"master": target.master}
    if target.sentinel_password:
        query["sentinel_password"] = target.sentinel_password
    return f"{SCHEME}://{auth}{hosts}/{target.db}?{urlencode(query)}"


def parse_sentinel_url(url: str) -> SentinelTarget | None:
    """The target of a sentinel URL; None for any other URL."""
    if not url.startswith(f"{SCHEME}://"):
        return None
    rest = url[len(SCHEME) + 3 :]
    netloc, _, tail = rest.partition("/")
    auth, _, hosts = netloc.rpartition("@")
    username, _, password = auth.partition(":")
    path, _, query = tail.partition("?")
    params = {k: v[0] for k, v in parse_qs(query).items()}
    return SentinelTarget(
        sentinels=host_ports("REDIS_SENTINELS", hosts),
        master=params["master"],
        username=unquote(username) or None,
        password=unquote(password) if auth else None,
        db=int(path or 0),
        sentinel_password=params.get("sentinel_password"),
    )
