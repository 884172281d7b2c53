"""Reading the environment one variable at a time: every error names the variable, in one
line, and never echoes a secret."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from service.mapping import Mapping as EventMapping
from service.mapping import MappingError, load_mapping


class SettingsError(ValueError):
    """A setting is missing or invalid; the message is one line and free of secrets."""


class Reader:
    """Reads one variable at a time and names it in every error."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def _raw(self, name: str) -> str:
        return self._env.get(name, "").strip()

    def text(self, name: str, default: str) -> str:
        value = self._raw(name) or default
        if any(c.isspace() for c in value):
            raise SettingsError(f"{name} must not contain whitespace")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = (self._raw(name) or default).upper()
        if value not in choices:
            raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    def integer(self, name: str, default: int, *, minimum: int) -> int:
        raw = self._raw(name)
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
        if value < minimum:
            raise SettingsError(f"{name} must be at least {minimum}, got {value}")
        return value

    def number(self, name: str, default: float) -> float:
        raw = self._raw(name)
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number, got {raw!r}") from None
        if not value > 0:
            raise SettingsError(f"{name} must be greater than 0, got {raw!r}")
        return value

    def redis_url(self, name: str) -> str:
        raw = self._raw(name)
        if not raw:
            raise SettingsError(f"{name} is required (e.g. redis://localhost:6379/0)")
        if urlsplit(raw).scheme not in ("redis", "rediss", "unix"):
            # The URL may carry a password: never echo it.
            raise SettingsError(f"{name} must start with redis://, rediss:// or unix://")
        return raw

    def http_url(self, name: str, *, required: bool, example: str = "https://api.example.com") -> str:
        raw = self._raw(name)
        if not raw:
            if required:
                raise SettingsError(f"{name} is required (e.g. {example})")
            return ""
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SettingsError(f"{name} must be an http(s) URL, got {raw!r}")
        if parts.query or parts.fragment:
            raise SettingsError(f"{name} must not have a query or fragment")
        return raw.rstrip("/")

    def secret(self, name: str, *, required: bool) -> str:
        raw = self._raw(name)
        if required and not raw:
            raise SettingsError(f"{name} is required")
        if any(c.isspace() for c in raw):
            raise SettingsError(f"{name} must not contain whitespace")
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
        try:
            return load_mapping(Path(raw) if raw else None)
        except MappingError as exc:
            raise SettingsError(f"{name}: {exc}") from None
