"""Redis Sentinel settings: REDIS_SENTINELS (host:port,host:port), REDIS_SENTINEL_MASTER (the name the
sentinels monitor), REDIS_SENTINEL_PASSWORD (the sentinels' own, optional). REDIS_URL is then
optional: when set, only its user, password and database are used (for the master). The three fold
into one URL (service/store/sentinel_url.py) that Settings.redis_url carries."""

from __future__ import annotations

import re
from urllib.parse import quote, quote_plus, unquote, urlsplit

from service.config.reader import Reader, SettingsError
from service.store.sentinel_url import SentinelTarget, host_ports, parse_sentinel_url, sentinel_url

_MASTER = re.compile(r"[A-Za-z0-9._-]{1,100}")
VARIABLES = ("REDIS_SENTINELS", "REDIS_SENTINEL_MASTER", "REDIS_SENTINEL_PASSWORD")


def redis_target(reader: Reader) -> str:
    """REDIS_URL, or the sentinel URL when REDIS_SENTINELS is set."""
    raw = reader.text("REDIS_SENTINELS", "")
    if not raw:
        return reader.redis_url("REDIS_URL")
    try:
        sentinels = host_ports(raw)
    except ValueError as exc:
        raise SettingsError(f"REDIS_SENTINELS {exc}") from None
    master = reader.text("REDIS_SENTINEL_MASTER", "")
    if not _MASTER.fullmatch(master):
        raise SettingsError("REDIS_SENTINEL_MASTER is required with REDIS_SENTINELS: the master name they monitor")
    sentinel_password = reader.secret("REDIS_SENTINEL_PASSWORD", required=False, in_header=False) or None
    username = password = None
    db = "0"
    if reader.text("REDIS_URL", ""):
        parts = urlsplit(reader.redis_url("REDIS_URL"))
        db = parts.path.strip("/") or "0"
        if not db.isdigit():
            raise SettingsError("REDIS_URL must end with a database number (/0) when REDIS_SENTINELS is set")
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
    return sentinel_url(SentinelTarget(sentinels, master, username, password, int(db), sentinel_password))


# A password shorter than this is not redacted: replacing every "0" or "pw" in a log line would mangle
# the line (its times, its ids) and still not hide a password that short.
MIN_REDACTED_PASSWORD = 8


def redis_passwords(url: str) -> tuple[str, ...]:
    """The passwords a Redis URL (or the sentinel URL redis_target makes) carries, as written and as
    meant (percent-decoded), of MIN_REDACTED_PASSWORD characters or more: what log redaction must hide."""
    target = parse_sentinel_url(url)
    if target is not None:
        found = [target.password, target.sentinel_password]
        found += [form(p, safe="") for p in found if p for form in (quote, quote_plus)]
    else:
        raw = urlsplit(url).password
        found = [raw, unquote(raw)] if raw else []
    return tuple(dict.fromkeys(p for p in found if p and len(p) >= MIN_REDACTED_PASSWORD))
