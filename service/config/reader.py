"""Reading the environment one variable at a time: every error names the variable, in one
line, and never echoes a secret."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from redis.connection import ConnectionPool
from redis.exceptions import RedisError

from service.mapping import Mapping as EventMapping
from service.mapping import MappingError, load_mapping

MAX_MAPPING_BYTES = 1024 * 1024
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(\.{_LABEL})*")


class SettingsError(ValueError):
    """A setting is missing or invalid; the message is one line and free of secrets."""


def _redis_options_problem(raw: str, parts: SplitResult) -> str | None:
    """What redis-py would fail on when a process first connects (None: nothing): the database, and the
    options of the query string, as every process builds its connection from the URL."""
    database = parts.path.strip("/")
    if parts.scheme != "unix" and database and not (database.isascii() and database.isdigit()):
        return f"the database must be a number, as in /0, got /{database}"
    try:
        connection = ConnectionPool.from_url(raw).make_connection()  # its arguments, read; nothing connects
    except (ValueError, TypeError, RedisError) as exc:  # redis-py's own for a bad ssl_cert_reqs or protocol
        if match := re.search(r"unexpected keyword argument '(\w+)'", str(exc)):
            return f"redis-py takes no option {match[1]} with {parts.scheme}://"
        message = str(exc).replace(raw, "the URL").splitlines()[0][:200]
        return message if not parts.password or parts.password not in message else "redis-py cannot read it"
    for option in ("socket_timeout", "socket_connect_timeout"):
        seconds = getattr(connection, option, None)
        if seconds is not None and not (seconds > 0 and math.isfinite(seconds)):
            return f"{option} must be a number of seconds above 0"
    return None


def _port_problem(parts: SplitResult) -> str | None:
    """Why the URL's port is unusable (urlsplit raises on 99999 or `notaport` only when asked)."""
    try:
        port = parts.port
    except ValueError:
        return "its port must be a number from 1 to 65535"
    return "its port must be a number from 1 to 65535" if port == 0 else None


def _split(name: str, what: str, raw: str) -> SplitResult:
    """urlsplit's ValueError (an unbalanced `[`, a bracketed host that is no IP address) as one line
    naming the variable; its own message is not shown, as it may quote the URL's user part."""
    try:
        return urlsplit(raw)
    except ValueError:
        raise SettingsError(
            f"{name} is not a usable {what}: its host cannot be read (an IPv6 address goes in [ ], e.g. [::1])"
        ) from None


def _masked(raw: str) -> str:
    """A malformed URL as an error may show it: all before its last `@` is hidden, since a password
    can sit there even when urlsplit sees no user part (`admin:pw@host`, `https:/admin:pw@host`)."""
    return f"***@{raw.rsplit('@', 1)[1]}" if "@" in raw else raw


def is_utf8(value: str) -> bool:
    """False for a value the environment or argv gave as bytes that are not UTF-8 (Python keeps them as
    lone surrogates, which no later encode survives)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


class Reader:
    """Reads one variable at a time and names it in every error."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def _raw(self, name: str) -> str:
        value = self._env.get(name, "").strip()
        if not is_utf8(value):
            raise SettingsError(f"{name} is not valid UTF-8")
        return value

    def text(self, name: str, default: str) -> str:
        value = self._raw(name) or default
        if any(c.isspace() for c in value):
            raise SettingsError(f"{name} must not contain whitespace")
        return value

    def host(self, name: str, default: str) -> str:
        """An address to listen on: an IP address or a host name, without a port."""
        value = self.text(name, default)
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not _HOST_NAME.fullmatch(value):
                raise SettingsError(f"{name} must be an IP address or a host name (no port), got {value!r}") from None
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = (self._raw(name) or default).upper()
        if value not in choices:
            raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    def integer(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        raw = self._raw(name)
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a whole number, got {raw[:40]!r}") from None
        if value < minimum:
            raise SettingsError(f"{name} must be at least {minimum}, got {value}")
        if value > maximum:
            raise SettingsError(f"{name} must be at most {maximum}, got {raw[:40]}")
        return value

    def number(self, name: str, default: float, *, maximum: float) -> float:
        raw = self._raw(name)
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number, got {raw[:40]!r}") from None
        if not (math.isfinite(value) and 0 < value <= maximum):
            raise SettingsError(f"{name} must be greater than 0 and at most {maximum:g}, got {raw[:40]!r}")
        return value

    def redis_url(self, name: str) -> str:
        raw = self._raw(name)
        if not raw:
            raise SettingsError(f"{name} is required (e.g. redis://localhost:6379/0)")
        # The URL may carry a password: never echo it.
        parts = _split(name, "Redis URL", raw)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise SettingsError(f"{name} must start with redis://, rediss:// or unix://")
        problem = _port_problem(parts) or _redis_options_problem(raw, parts)
        if problem:
            raise SettingsError(f"{name} is not a usable Redis URL: {problem}")
        return raw

    def http_url(self, name: str, *, required: bool, example: str = "https://api.example.com") -> str:
        raw = self._raw(name)
        if not raw:
            if required:
                raise SettingsError(f"{name} is required (e.g. {example})")
            return ""
        parts = _split(name, "URL", raw)
        if any(c.isspace() for c in raw):  # two values pasted together, maybe a key: not echoed
            raise SettingsError(f"{name} must not contain whitespace")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingsError(f"{name} must be an http(s) URL, got {_masked(raw)!r}")
        if "@" in parts.netloc:
            raise SettingsError(
                f"{name} must not carry credentials (user:password@): the credential has its own setting"
            )
        problem = _port_problem(parts)
        if problem:
            raise SettingsError(f"{name} is not a usable URL: {problem}")
        if parts.query or parts.fragment:
            raise SettingsError(f"{name} must not have a query or fragment")
        return raw.rstrip("/")

    def secret(self, name: str, *, required: bool, in_header: bool = True) -> str:
        """`in_header`: sent in an HTTP header (API keys, tokens), so printable ASCII."""
        raw = self._raw(name)
        if required and not raw:
            raise SettingsError(f"{name} is required")
        if any(c.isspace() for c in raw):
            raise SettingsError(f"{name} must not contain whitespace")
        if in_header and not (raw.isascii() and raw.isprintable()):
            raise SettingsError(f"{name} holds a character that is not printable ASCII (one pasted with it?)")
        return raw

    def names(self, name: str, known: tuple[str, ...]) -> tuple[str, ...]:
        """A comma-separated list of names from `known` (default: the first of them)."""
        raw = self._raw(name) or known[0]
        names = tuple(dict.fromkeys(part.strip().lower() for part in raw.split(",")))
        unknown = [n for n in names if n not in known]
        if unknown or not all(names):
            raise SettingsError(f"{name} must list destinations from {', '.join(known)}, got {raw!r}")
        return names

    def secret_list(self, name: str, problem: Callable[[str], str | None] | None) -> tuple[str, ...]:
        """Comma-separated secrets (several at once while rotating); `problem` names a bad one."""
        raw = self._raw(name)
        if not raw:
            return ()
        secrets = tuple(s.strip() for s in raw.split(","))
        for position, secret in enumerate(secrets, start=1):
            found = "it is empty" if not secret else problem(secret) if problem else None
            if any(c.isspace() for c in secret):
                found = "it contains whitespace"
            if found:
                raise SettingsError(f"{name}: secret #{position} is not usable: {found}")
        return secrets

    def mapping(self, name: str) -> EventMapping:
        raw = self._raw(name)
        if raw:
            path = Path(raw)
            try:
                if not path.is_file():
                    raise SettingsError(f"{name}: cannot read {raw}: not a regular file")
                if path.stat().st_size > MAX_MAPPING_BYTES:
                    raise SettingsError(f"{name}: {raw} is larger than {MAX_MAPPING_BYTES} bytes")
                path.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                raise SettingsError(f"{name}: {raw} is not a UTF-8 text (TOML) file") from None
            except OSError as exc:
                raise SettingsError(f"{name}: cannot read {raw}: {exc.strerror}") from None
        try:
            return load_mapping(Path(raw) if raw else None)
        except MappingError as exc:
            raise SettingsError(f"{name}: {' '.join(str(exc).split())}") from None
