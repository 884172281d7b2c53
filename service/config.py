"""Settings: the one place that reads the environment.

Every value is validated at start-up; a bad value raises `SettingsError` with a one-line
reason that never contains a secret, and the process stops.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from service.keys import DESTINATIONS
from service.mapping import Mapping as EventMapping
from service.mapping import MappingError, load_mapping
from service.signatures import standard_webhook_key

# Stripe retries a webhook for up to 3 days; remember accepted ids longer than that.
MIN_DEDUP_TTL_SECONDS = 3 * 24 * 3600
DEFAULT_DEDUP_TTL_SECONDS = 7 * 24 * 3600
DEFAULT_STRIPE_TOLERANCE_SECONDS = 300
DEFAULT_STANDARD_TOLERANCE_SECONDS = 300  # the Standard Webhooks reference libraries' five minutes
DEFAULT_PADDLE_TOLERANCE_SECONDS = 5  # what Paddle's SDKs enforce by default
# Retries: exponential backoff with full jitter, given up (dead-lettered) after a day.
DEFAULT_RETRY_BASE_SECONDS = 2.0
DEFAULT_RETRY_MAX_DELAY_SECONDS = 3600.0
DEFAULT_RETRY_GIVE_UP_SECONDS = 24 * 3600.0
DEFAULT_USERCOM_CONNECT_TIMEOUT = 3.0
DEFAULT_USERCOM_READ_TIMEOUT = 10.0
DEFAULT_PORT = 8000
DEFAULT_METRICS_PORT = 9100  # the worker's /metrics
# User.com publishes no numbers: 10 calls/s, one at a time per slot (burst 1 never exceeds the
# rate over any sliding 1 s window), at most 10 calls in flight across the cluster.
DEFAULT_USERCOM_RATE_LIMIT = 10.0
DEFAULT_USERCOM_BURST = 1
DEFAULT_USERCOM_MAX_IN_FLIGHT = 10
DEFAULT_USERKIT_API_URL = "https://api.userkit.io"
DEFAULT_DLQ_MAX_ITEMS = 100_000
DEFAULT_DLQ_TTL_DAYS = 30
# gunicorn gthread: an I/O-bound receiver; one process per core, a few threads each.
DEFAULT_WEB_WORKERS = 2
DEFAULT_WEB_THREADS = 4
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

ROLES = ("web", "worker", "admin", "all")  # admin: `relay dlq`, which needs Redis only


class SettingsError(ValueError):
    """A setting is missing or invalid; the message is one line and free of secrets."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    redis_url: str
    usercom_api_url: str = ""
    usercom_api_key: str = field(default="", repr=False)
    stripe_webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    stripe_tolerance_seconds: int = DEFAULT_STRIPE_TOLERANCE_SECONDS
    standard_webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    standard_tolerance_seconds: int = DEFAULT_STANDARD_TOLERANCE_SECONDS
    paddle_webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    paddle_tolerance_seconds: int = DEFAULT_PADDLE_TOLERANCE_SECONDS
    lemonsqueezy_webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    identity_key: str = "user_id"
    mapping: EventMapping = field(default_factory=lambda: load_mapping(None))
    admin_token: str = field(default="", repr=False)
    dedup_ttl_seconds: int = DEFAULT_DEDUP_TTL_SECONDS
    retry_base_seconds: float = DEFAULT_RETRY_BASE_SECONDS
    retry_max_delay_seconds: float = DEFAULT_RETRY_MAX_DELAY_SECONDS
    retry_give_up_seconds: float = DEFAULT_RETRY_GIVE_UP_SECONDS
    usercom_connect_timeout: float = DEFAULT_USERCOM_CONNECT_TIMEOUT
    usercom_read_timeout: float = DEFAULT_USERCOM_READ_TIMEOUT
    port: int = DEFAULT_PORT
    web_workers: int = DEFAULT_WEB_WORKERS
    web_threads: int = DEFAULT_WEB_THREADS
    log_level: str = "INFO"
    metrics_port: int = DEFAULT_METRICS_PORT
    dlq_max_items: int = DEFAULT_DLQ_MAX_ITEMS
    dlq_ttl_days: int = DEFAULT_DLQ_TTL_DAYS
    destinations: tuple[str, ...] = ("usercom",)
    userkit_api_url: str = DEFAULT_USERKIT_API_URL
    userkit_app_secret: str = field(default="", repr=False)
    userkit_rate_limit: float = DEFAULT_USERCOM_RATE_LIMIT
    userkit_burst: int = DEFAULT_USERCOM_BURST
    userkit_max_in_flight: int = DEFAULT_USERCOM_MAX_IN_FLIGHT
    usercom_rate_limit: float = DEFAULT_USERCOM_RATE_LIMIT
    usercom_burst: int = DEFAULT_USERCOM_BURST
    usercom_max_in_flight: int = DEFAULT_USERCOM_MAX_IN_FLIGHT
    metrics_dir: str = ""  # PROMETHEUS_MULTIPROC_DIR; `relay web` / `relay worker` pick one when unset

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret value, for redaction."""
        webhook_secrets = (
            *self.stripe_webhook_secrets,
            *self.standard_webhook_secrets,
            *self.paddle_webhook_secrets,
            *self.lemonsqueezy_webhook_secrets,
        )
        others = (self.usercom_api_key, self.userkit_app_secret, self.admin_token)
        return tuple(s for s in (*webhook_secrets, *others) if s)

    @property
    def webhook_sources(self) -> tuple[str, ...]:
        """The sources with a secret set: each gets its /webhooks/<source> endpoint."""
        return tuple(name for name in SOURCE_SECRETS if self.source_secrets(name))

    def source_secrets(self, source: str) -> tuple[str, ...]:
        return getattr(self, SOURCE_SECRETS[source].lower())  # e.g. PADDLE_WEBHOOK_SECRETS -> paddle_webhook_secrets

    def rate_limits(self, destination: str) -> tuple[float, int, int]:
        """A destination's calls per second, burst and calls in flight, cluster-wide."""
        if destination == "userkit":
            return self.userkit_rate_limit, self.userkit_burst, self.userkit_max_in_flight
        return self.usercom_rate_limit, self.usercom_burst, self.usercom_max_in_flight

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, role: str = "all") -> Settings:
        """Build and validate settings; `role` says which process needs which secrets."""
        if role not in ROLES:
            raise SettingsError(f"unknown role {role!r}")
        env = os.environ if env is None else env
        reader = _Reader(env)
        needs_web = role in ("web", "all")
        needs_worker = role in ("worker", "all")
        destinations = reader.destinations("RELAY_DESTINATIONS")
        needs_usercom = needs_worker and "usercom" in destinations
        needs_userkit = needs_worker and "userkit" in destinations
        settings = cls(
            redis_url=reader.redis_url("REDIS_URL"),
            destinations=destinations,
            usercom_api_url=reader.http_url("USERCOM_API_URL", required=needs_usercom),
            usercom_api_key=reader.secret("USERCOM_API_KEY", required=needs_usercom),
            userkit_api_url=reader.http_url("USERKIT_API_URL", required=False) or DEFAULT_USERKIT_API_URL,
            userkit_app_secret=reader.secret("USERKIT_APP_SECRET", required=needs_userkit),
            userkit_rate_limit=reader.number("USERKIT_RATE_LIMIT", DEFAULT_USERCOM_RATE_LIMIT),
            userkit_burst=reader.integer("USERKIT_BURST", DEFAULT_USERCOM_BURST, minimum=1),
            userkit_max_in_flight=reader.integer("USERKIT_MAX_IN_FLIGHT", DEFAULT_USERCOM_MAX_IN_FLIGHT, minimum=1),
            stripe_webhook_secrets=reader.secret_list("STRIPE_WEBHOOK_SECRETS", _stripe_secret_problem),
            stripe_tolerance_seconds=reader.integer(
                "STRIPE_TOLERANCE_SECONDS", DEFAULT_STRIPE_TOLERANCE_SECONDS, minimum=1
            ),
            standard_webhook_secrets=reader.secret_list("STANDARD_WEBHOOK_SECRETS", _standard_secret_problem),
            standard_tolerance_seconds=reader.integer(
                "STANDARD_WEBHOOK_TOLERANCE_SECONDS", DEFAULT_STANDARD_TOLERANCE_SECONDS, minimum=1
            ),
            paddle_webhook_secrets=reader.secret_list("PADDLE_WEBHOOK_SECRETS", None),
            paddle_tolerance_seconds=reader.integer(
                "PADDLE_TOLERANCE_SECONDS", DEFAULT_PADDLE_TOLERANCE_SECONDS, minimum=1
            ),
            lemonsqueezy_webhook_secrets=reader.secret_list("LEMONSQUEEZY_WEBHOOK_SECRETS", None),
            identity_key=reader.text("RELAY_IDENTITY_KEY", "user_id"),
            mapping=reader.mapping("RELAY_MAPPING_FILE"),
            admin_token=reader.secret("RELAY_ADMIN_TOKEN", required=False),
            dedup_ttl_seconds=reader.integer(
                "RELAY_DEDUP_TTL_SECONDS", DEFAULT_DEDUP_TTL_SECONDS, minimum=MIN_DEDUP_TTL_SECONDS
            ),
            retry_base_seconds=reader.number("RELAY_RETRY_BASE_SECONDS", DEFAULT_RETRY_BASE_SECONDS),
            retry_max_delay_seconds=reader.number("RELAY_RETRY_MAX_DELAY_SECONDS", DEFAULT_RETRY_MAX_DELAY_SECONDS),
            retry_give_up_seconds=reader.number("RELAY_RETRY_GIVE_UP_SECONDS", DEFAULT_RETRY_GIVE_UP_SECONDS),
            usercom_connect_timeout=reader.number("USERCOM_CONNECT_TIMEOUT_SECONDS", DEFAULT_USERCOM_CONNECT_TIMEOUT),
            usercom_read_timeout=reader.number("USERCOM_READ_TIMEOUT_SECONDS", DEFAULT_USERCOM_READ_TIMEOUT),
            port=reader.integer("PORT", DEFAULT_PORT, minimum=1),
            web_workers=reader.integer("RELAY_WEB_WORKERS", DEFAULT_WEB_WORKERS, minimum=1),
            web_threads=reader.integer("RELAY_WEB_THREADS", DEFAULT_WEB_THREADS, minimum=1),
            log_level=reader.choice("RELAY_LOG_LEVEL", "INFO", LOG_LEVELS),
            metrics_port=reader.integer("RELAY_METRICS_PORT", DEFAULT_METRICS_PORT, minimum=1),
            dlq_max_items=reader.integer("RELAY_DLQ_MAX_ITEMS", DEFAULT_DLQ_MAX_ITEMS, minimum=1),
            dlq_ttl_days=reader.integer("RELAY_DLQ_TTL_DAYS", DEFAULT_DLQ_TTL_DAYS, minimum=1),
            usercom_rate_limit=reader.number("USERCOM_RATE_LIMIT", DEFAULT_USERCOM_RATE_LIMIT),
            usercom_burst=reader.integer("USERCOM_BURST", DEFAULT_USERCOM_BURST, minimum=1),
            usercom_max_in_flight=reader.integer("USERCOM_MAX_IN_FLIGHT", DEFAULT_USERCOM_MAX_IN_FLIGHT, minimum=1),
            metrics_dir=reader.text("PROMETHEUS_MULTIPROC_DIR", ""),
        )
        for name, port in (("PORT", settings.port), ("RELAY_METRICS_PORT", settings.metrics_port)):
            if port > 65535:
                raise SettingsError(f"{name} must be at most 65535, got {port}")
        if needs_web and not settings.webhook_sources:
            wanted = ", ".join(SOURCE_SECRETS.values())
            raise SettingsError(f"no webhook source is configured: set at least one of {wanted}")
        if settings.retry_max_delay_seconds < settings.retry_base_seconds:
            raise SettingsError("RELAY_RETRY_MAX_DELAY_SECONDS must be >= RELAY_RETRY_BASE_SECONDS")
        return settings


class _Reader:
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

    def http_url(self, name: str, *, required: bool) -> str:
        raw = self._raw(name)
        if not raw:
            if required:
                raise SettingsError(f"{name} is required (e.g. https://acme.user.com/api/public)")
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

    def destinations(self, name: str) -> tuple[str, ...]:
        raw = self._raw(name) or DESTINATIONS[0]
        names = tuple(dict.fromkeys(part.strip().lower() for part in raw.split(",")))
        unknown = [n for n in names if n not in DESTINATIONS]
        if unknown or not all(names):
            raise SettingsError(f"{name} must list destinations from {', '.join(DESTINATIONS)}, got {raw!r}")
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


# Each webhook source and the setting holding its secrets.
SOURCE_SECRETS = {
    "stripe": "STRIPE_WEBHOOK_SECRETS",
    "standard": "STANDARD_WEBHOOK_SECRETS",
    "paddle": "PADDLE_WEBHOOK_SECRETS",
    "lemonsqueezy": "LEMONSQUEEZY_WEBHOOK_SECRETS",
}


def _stripe_secret_problem(secret: str) -> str | None:
    if not secret.startswith("whsec_") or len(secret) <= len("whsec_"):
        return "a Stripe signing secret starts with whsec_"
    return None


def _standard_secret_problem(secret: str) -> str | None:
    try:
        standard_webhook_key(secret)
    except ValueError as exc:
        return str(exc)
    return None


def settings_or_exit(role: str) -> Settings:
    """For commands: a bad setting stops the process with one line on stderr (exit 2)."""
    try:
        return Settings.from_env(role=role)
    except SettingsError as exc:
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
