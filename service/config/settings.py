"""Settings: the one place that reads the environment.

Every value is validated at start-up; a bad value raises `SettingsError` with a one-line
reason that never contains a secret, and the process stops. Each source and destination names
its own variables (its spec in the registries); this module reads them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from service.config.reader import Reader, SettingsError
from service.config.sentinel import redis_passwords, redis_target
from service.destinations.base import DestinationSettings, DestinationSpec
from service.destinations.registry import DESTINATIONS, NAMES
from service.mapping import Mapping as EventMapping
from service.mapping import load_mapping
from service.sources.base import SourceSettings
from service.sources.extraction import BUYER_SETTABLE_FIELDS
from service.sources.registry import SOURCES
from service.store.jobs import DELIVERY_JOB_TIMEOUT, MAX_CALL_SECONDS

# Stripe retries a webhook for up to 3 days; remember accepted ids longer than that.
MIN_DEDUP_TTL_SECONDS = 3 * 24 * 3600
DEFAULT_DEDUP_TTL_SECONDS = 7 * 24 * 3600
# Upper bounds: every value must be one Redis, urllib3 and the OS accept (no inf, no 1e16).
DAY = 24 * 3600
MAX_DEDUP_TTL_SECONDS = 365 * DAY
MAX_RETRY_BASE_SECONDS = 3600.0
MAX_RETRY_MAX_DELAY_SECONDS = 7 * DAY
MAX_RETRY_GIVE_UP_SECONDS = 30 * DAY
MAX_TOLERANCE_SECONDS = DAY
MAX_PORT = 65535
MAX_WEB_WORKERS = 256
MAX_WEB_THREADS = 1000
MAX_WEB_KEEPALIVE_SECONDS = 300
MAX_RATE_LIMIT = 100_000.0
MAX_CONCURRENCY = 100_000  # burst, calls in flight
MAX_DLQ_ITEMS = 100_000_000
MAX_DLQ_TTL_DAYS = 3650
# An event time further ahead than this is refused: it would win last-writer-wins for good.
DEFAULT_MAX_CLOCK_SKEW_SECONDS = 300
# Retries: exponential backoff with full jitter, given up (dead-lettered) after a day.
DEFAULT_RETRY_BASE_SECONDS = 2.0
DEFAULT_RETRY_MAX_DELAY_SECONDS = 3600.0
DEFAULT_RETRY_GIVE_UP_SECONDS = 24 * 3600.0
DEFAULT_CONNECT_TIMEOUT = 3.0
DEFAULT_READ_TIMEOUT = 10.0
DEFAULT_PORT = 8000
DEFAULT_METRICS_PORT = 9100  # the worker's /metrics
# No destination publishes numbers: 10 calls/s, one at a time per slot (burst 1 never exceeds the
# rate over any sliding 1 s window), at most 10 calls in flight across the cluster.
DEFAULT_RATE_LIMIT = 10.0
DEFAULT_BURST = 1
DEFAULT_MAX_IN_FLIGHT = 10
DEFAULT_DLQ_MAX_ITEMS = 100_000
DEFAULT_DLQ_TTL_DAYS = 30
# gunicorn gthread: an I/O-bound receiver; one process per core, a few threads each.
DEFAULT_WEB_WORKERS = 2
DEFAULT_WEB_THREADS = 4
DEFAULT_WEB_KEEPALIVE_SECONDS = 5
# How often a worker runs rq's maintenance (finds jobs whose worker died): workers/runner.py.
DEFAULT_MAINTENANCE_INTERVAL_SECONDS = 5
MAX_MAINTENANCE_INTERVAL_SECONDS = 600
DEFAULT_STRIPE_API_BASE = "https://api.stripe.com"
DEFAULT_PADDLE_API_BASE = "https://api.paddle.com"
DEFAULT_LEMONSQUEEZY_API_BASE = "https://api.lemonsqueezy.com"  # its paths carry the version: /v1/...
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DURABLE_ACK_MODES = ("OFF", "FSYNC", "REPLICA")  # read as upper case by Reader.choice; kept lower case

ROLES = ("web", "worker", "admin", "all")  # admin: `relay dlq`, which needs Redis only


@dataclass(frozen=True, kw_only=True)
class Settings:
    redis_url: str = field(repr=False)  # may carry a password
    sources: dict[str, SourceSettings] = field(default_factory=dict)  # every known source; on when it has secrets
    destinations: tuple[str, ...] = (NAMES[0],)  # the configured ones, in order
    destination_settings: dict[str, DestinationSettings] = field(default_factory=dict)
    identity_key: str = "user_id"
    mapping: EventMapping = field(default_factory=lambda: load_mapping(None))
    admin_token: str = field(default="", repr=False)
    dedup_ttl_seconds: int = DEFAULT_DEDUP_TTL_SECONDS
    retry_base_seconds: float = DEFAULT_RETRY_BASE_SECONDS
    retry_max_delay_seconds: float = DEFAULT_RETRY_MAX_DELAY_SECONDS
    retry_give_up_seconds: float = DEFAULT_RETRY_GIVE_UP_SECONDS
    port: int = DEFAULT_PORT
    web_workers: int = DEFAULT_WEB_WORKERS
    web_threads: int = DEFAULT_WEB_THREADS
    web_keepalive_seconds: int = DEFAULT_WEB_KEEPALIVE_SECONDS  # gunicorn --keep-alive (also bounds a header read)
    maintenance_interval_seconds: int = DEFAULT_MAINTENANCE_INTERVAL_SECONDS
    log_level: str = "INFO"
    metrics_port: int = DEFAULT_METRICS_PORT
    metrics_bind: str = "0.0.0.0"  # noqa: S104 - the worker's /metrics, scraped from other pods
    dlq_max_items: int = DEFAULT_DLQ_MAX_ITEMS
    dlq_ttl_days: int = DEFAULT_DLQ_TTL_DAYS
    trace_per_user: int = 20  # per-user trace entries kept per destination (0: off); service/store/trace.py
    trace_ttl_days: int = 7
    max_clock_skew_seconds: int = DEFAULT_MAX_CLOCK_SKEW_SECONDS
    metrics_dir: str = ""  # PROMETHEUS_MULTIPROC_DIR; `relay web` / `relay worker` pick one when unset
    # Reading back from the providers' APIs (`relay backfill|sync|reconcile`, service/backfill): read-only keys.
    stripe_api_key: str = field(default="", repr=False)
    stripe_api_base: str = DEFAULT_STRIPE_API_BASE
    paddle_api_key: str = field(default="", repr=False)
    paddle_api_base: str = DEFAULT_PADDLE_API_BASE
    lemonsqueezy_api_key: str = field(
        default="", repr=False
    )  # `relay sync lemonsqueezy` only: LS keeps no event history
    lemonsqueezy_api_base: str = DEFAULT_LEMONSQUEEZY_API_BASE
    reconcile_interval_seconds: int = 0  # RELAY_RECONCILE_INTERVAL: 0 = off
    trusted_identity_fields: frozenset[str] = frozenset()  # buyer-settable fields that may name the user
    # fsync / replica: answer 2xx only once the write is on disk / on a replica (service/store/durability.py)
    durable_ack: str = "off"

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret value, for redaction."""
        webhook_secrets = [s for source in self.sources.values() for s in source.secrets]
        credentials = [d.credential for d in self.destination_settings.values()]
        api_keys = (self.stripe_api_key, self.paddle_api_key, self.lemonsqueezy_api_key)
        every = (*webhook_secrets, *credentials, self.admin_token, *api_keys, *redis_passwords(self.redis_url))
        return tuple(s for s in every if s)

    @property
    def webhook_sources(self) -> tuple[str, ...]:
        """The sources with a secret set: each gets its /webhooks/<source> endpoint."""
        return tuple(name for name in SOURCES if self.source_secrets(name))

    def source(self, name: str) -> SourceSettings:
        return self.sources.get(name) or SourceSettings((), SOURCES[name].default_tolerance, self.identity_key)

    def source_secrets(self, name: str) -> tuple[str, ...]:
        return self.source(name).secrets

    def destination(self, name: str) -> DestinationSettings:
        return self.destination_settings[name]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, role: str = "all") -> Settings:
        """Build and validate settings; `role` says which process needs which secrets."""
        if role not in ROLES:
            raise SettingsError(f"unknown role {role!r}")
        env = os.environ if env is None else env
        reader = Reader(env)
        needs_web = role in ("web", "all")
        needs_worker = role in ("worker", "all")
        destinations = reader.names("RELAY_DESTINATIONS", NAMES)
        identity_key = reader.text("RELAY_IDENTITY_KEY", "user_id")
        max_skew = reader.integer(
            "RELAY_MAX_CLOCK_SKEW_SECONDS", DEFAULT_MAX_CLOCK_SKEW_SECONDS, minimum=0, maximum=DAY
        )
        dedup_ttl = reader.integer(
            "RELAY_DEDUP_TTL_SECONDS",
            DEFAULT_DEDUP_TTL_SECONDS,
            minimum=MIN_DEDUP_TTL_SECONDS,
            maximum=MAX_DEDUP_TTL_SECONDS,
        )
        settings = cls(
            redis_url=redis_target(reader),  # REDIS_URL, or REDIS_SENTINELS (service/config/sentinel.py)
            sources={name: _source(reader, name, identity_key, dedup_ttl - max_skew) for name in SOURCES},
            destinations=destinations,
            destination_settings={
                name: _destination(reader, spec, required=needs_worker and name in destinations)
                for name, spec in DESTINATIONS.items()
            },
            identity_key=identity_key,
            mapping=reader.mapping("RELAY_MAPPING_FILE"),
            admin_token=reader.secret("RELAY_ADMIN_TOKEN", required=False),
            dedup_ttl_seconds=dedup_ttl,
            retry_base_seconds=reader.number(
                "RELAY_RETRY_BASE_SECONDS", DEFAULT_RETRY_BASE_SECONDS, maximum=MAX_RETRY_BASE_SECONDS
            ),
            retry_max_delay_seconds=reader.number(
                "RELAY_RETRY_MAX_DELAY_SECONDS", DEFAULT_RETRY_MAX_DELAY_SECONDS, maximum=MAX_RETRY_MAX_DELAY_SECONDS
            ),
            retry_give_up_seconds=reader.number(
                "RELAY_RETRY_GIVE_UP_SECONDS", DEFAULT_RETRY_GIVE_UP_SECONDS, maximum=MAX_RETRY_GIVE_UP_SECONDS
            ),
            port=reader.integer("PORT", DEFAULT_PORT, minimum=1, maximum=MAX_PORT),
            web_workers=reader.integer("RELAY_WEB_WORKERS", DEFAULT_WEB_WORKERS, minimum=1, maximum=MAX_WEB_WORKERS),
            web_threads=reader.integer("RELAY_WEB_THREADS", DEFAULT_WEB_THREADS, minimum=1, maximum=MAX_WEB_THREADS),
            web_keepalive_seconds=reader.integer(
                "RELAY_WEB_KEEPALIVE_SECONDS",
                DEFAULT_WEB_KEEPALIVE_SECONDS,
                minimum=1,
                maximum=MAX_WEB_KEEPALIVE_SECONDS,
            ),
            maintenance_interval_seconds=reader.integer(
                "RELAY_MAINTENANCE_INTERVAL_SECONDS",
                DEFAULT_MAINTENANCE_INTERVAL_SECONDS,
                minimum=1,
                maximum=MAX_MAINTENANCE_INTERVAL_SECONDS,
            ),
            log_level=reader.choice("RELAY_LOG_LEVEL", "INFO", LOG_LEVELS),
            metrics_port=reader.integer("RELAY_METRICS_PORT", DEFAULT_METRICS_PORT, minimum=1, maximum=MAX_PORT),
            metrics_bind=reader.host("RELAY_METRICS_BIND", "0.0.0.0"),  # noqa: S104
            dlq_max_items=reader.integer(
                "RELAY_DLQ_MAX_ITEMS", DEFAULT_DLQ_MAX_ITEMS, minimum=1, maximum=MAX_DLQ_ITEMS
            ),
            dlq_ttl_days=reader.integer(
                "RELAY_DLQ_TTL_DAYS", DEFAULT_DLQ_TTL_DAYS, minimum=1, maximum=MAX_DLQ_TTL_DAYS
            ),
            max_clock_skew_seconds=max_skew,
            metrics_dir=reader.text("PROMETHEUS_MULTIPROC_DIR", ""),
            trace_per_user=reader.integer("RELAY_TRACE_PER_USER", 20, minimum=0, maximum=1000),
            trace_ttl_days=reader.integer("RELAY_TRACE_TTL_DAYS", 7, minimum=1, maximum=365),
            stripe_api_key=reader.secret("STRIPE_API_KEY", required=False),
            stripe_api_base=reader.http_url("STRIPE_API_BASE", required=False) or DEFAULT_STRIPE_API_BASE,
            paddle_api_key=reader.secret("PADDLE_API_KEY", required=False),
            paddle_api_base=reader.http_url("PADDLE_API_BASE", required=False) or DEFAULT_PADDLE_API_BASE,
            lemonsqueezy_api_key=reader.secret("LEMONSQUEEZY_API_KEY", required=False),
            lemonsqueezy_api_base=reader.http_url("LEMONSQUEEZY_API_BASE", required=False)
            or DEFAULT_LEMONSQUEEZY_API_BASE,
            reconcile_interval_seconds=reader.integer("RELAY_RECONCILE_INTERVAL", 0, minimum=0, maximum=DAY),
            trusted_identity_fields=_trusted_fields(reader.text("RELAY_TRUSTED_IDENTITY_FIELDS", "")),
            durable_ack=reader.choice("RELAY_DURABLE_ACK", "off", DURABLE_ACK_MODES).lower(),
        )
        if needs_web and not settings.webhook_sources:
            wanted = ", ".join(spec.secret_env for spec in SOURCES.values())
            raise SettingsError(f"no webhook source is configured: set at least one of {wanted}")
        if settings.retry_max_delay_seconds < settings.retry_base_seconds:
            raise SettingsError("RELAY_RETRY_MAX_DELAY_SECONDS must be >= RELAY_RETRY_BASE_SECONDS")
        return settings


def _source(reader: Reader, name: str, identity_key: str, max_age: int) -> SourceSettings:
    """A source that signs no time (Lemon Squeezy) takes events only while the dedup memory
    surely holds their id (its lifetime less the clock skew an event time may have): an older
    one could be a captured delivery replayed once its id is forgotten."""
    spec = SOURCES[name]
    tolerance = max_age
    if spec.tolerance_env is not None:
        tolerance = reader.integer(spec.tolerance_env, spec.default_tolerance, minimum=1, maximum=MAX_TOLERANCE_SECONDS)
    return SourceSettings(reader.secret_list(spec.secret_env, spec.secret_problem), tolerance, identity_key)


def _trusted_fields(raw: str) -> frozenset[str]:
    names = {part.strip().lower() for part in raw.split(",")} - {"", "none"}
    unknown = sorted(names - set(BUYER_SETTABLE_FIELDS))
    if unknown:
        known = ", ".join(BUYER_SETTABLE_FIELDS)
        raise SettingsError(f"RELAY_TRUSTED_IDENTITY_FIELDS must list fields from {known} (or none), got {raw!r}")
    return frozenset(names)


def _destination(reader: Reader, spec: DestinationSpec, *, required: bool) -> DestinationSettings:
    connect_timeout = reader.number(spec.connect_timeout_env, DEFAULT_CONNECT_TIMEOUT, maximum=MAX_CALL_SECONDS)
    read_timeout = reader.number(spec.read_timeout_env, DEFAULT_READ_TIMEOUT, maximum=MAX_CALL_SECONDS)
    if connect_timeout + read_timeout > MAX_CALL_SECONDS:
        raise SettingsError(
            f"{spec.connect_timeout_env} + {spec.read_timeout_env} must be at most {MAX_CALL_SECONDS:g} s, got "
            f"{connect_timeout:g} + {read_timeout:g}: a call must fit in a delivery job ({DELIVERY_JOB_TIMEOUT} s)"
        )
    return DestinationSettings(
        api_url=reader.http_url(spec.url_env, required=required and not spec.url_default, example=spec.url_example)
        or spec.url_default,
        credential=reader.secret(spec.credential_env, required=required),
        rate_limit=reader.number(spec.rate_env, DEFAULT_RATE_LIMIT, maximum=MAX_RATE_LIMIT),
        burst=reader.integer(spec.burst_env, DEFAULT_BURST, minimum=1, maximum=MAX_CONCURRENCY),
        max_in_flight=reader.integer(spec.in_flight_env, DEFAULT_MAX_IN_FLIGHT, minimum=1, maximum=MAX_CONCURRENCY),
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )


def settings_or_exit(role: str) -> Settings:
    """For commands: a bad setting stops the process with one line on stderr (exit 2)."""
    try:
        return Settings.from_env(role=role)
    except SettingsError as exc:
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
