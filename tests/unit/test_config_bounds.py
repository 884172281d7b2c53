"""Every setting is bounded: what passes check-config is what Redis, urllib3 and the OS accept."""

from __future__ import annotations

import pytest

from service.cli import gunicorn_argv
from service.config import Settings, SettingsError

BASE = {
    "REDIS_URL": "redis://:hunter2@localhost:6379/0",
    "STRIPE_WEBHOOK_SECRETS": "whsec_one",
    "USERCOM_API_URL": "https://acme.user.com/api/public/",
    "USERCOM_API_KEY": "secret-api-key",
}
SECRETS = ("hunter2", "secret-api-key", "whsec_one", "s3cr3t-pass")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        *[
            (name, value)
            for name in (
                "RELAY_RETRY_BASE_SECONDS",
                "RELAY_RETRY_MAX_DELAY_SECONDS",
                "RELAY_RETRY_GIVE_UP_SECONDS",
                "USERCOM_CONNECT_TIMEOUT_SECONDS",
                "USERCOM_READ_TIMEOUT_SECONDS",
                "USERCOM_RATE_LIMIT",
            )
            for value in ("inf", "nan", "1e308", "-inf")
        ],
        ("RELAY_DEDUP_TTL_SECONDS", "10000000000000000"),
        ("RELAY_DEDUP_TTL_SECONDS", "1e16"),
        ("RELAY_DLQ_TTL_DAYS", "99999999999"),
        ("RELAY_DLQ_MAX_ITEMS", "9" * 30),
        ("RELAY_WEB_WORKERS", "100000"),
        ("RELAY_WEB_KEEPALIVE_SECONDS", "0"),
        ("RELAY_WEB_KEEPALIVE_SECONDS", "301"),
        ("RELAY_MAINTENANCE_INTERVAL_SECONDS", "0"),
        ("RELAY_MAINTENANCE_INTERVAL_SECONDS", "601"),
        ("USERCOM_BURST", "9" * 20),
        ("STRIPE_TOLERANCE_SECONDS", "9" * 20),
        ("PORT", "70000"),
        ("RELAY_METRICS_PORT", "99999"),
        ("REDIS_URL", "redis://:hunter2@localhost:99999/0"),
        ("REDIS_URL", "redis://:hunter2@localhost:notaport/0"),
        ("REDIS_URL", "redis://:hunter2@localhost:6379/0?socket_timeout=x"),
        ("USERCOM_API_URL", "https://user:s3cr3t-pass@acme.user.com/api/public"),
        ("USERCOM_API_URL", "ftp://user:s3cr3t-pass@acme.user.com/api/public"),
        ("USERCOM_API_URL", "https://acme.user.com:99999/api/public"),
        ("USERCOM_API_URL", "https://acme.user.com:notaport/api/public"),
        ("RELAY_MAPPING_FILE", "/bin/ls"),
        ("RELAY_MAPPING_FILE", "/"),
        ("RELAY_MAPPING_FILE", "/dev/zero"),
    ],
)
def test_out_of_bounds_values_stop_with_one_line_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({**BASE, name: value})
    message = str(raised.value)
    assert message.startswith(name), message
    assert "\n" not in message and len(message) < 300, message
    assert not any(secret in message for secret in SECRETS), message


def test_values_at_the_bounds_are_taken() -> None:
    settings = Settings.from_env(
        {
            **BASE,
            "RELAY_DEDUP_TTL_SECONDS": str(365 * 24 * 3600),
            "RELAY_RETRY_GIVE_UP_SECONDS": "2592000",
            "USERCOM_CONNECT_TIMEOUT_SECONDS": "3",
            "USERCOM_READ_TIMEOUT_SECONDS": "27",  # together, MAX_CALL_SECONDS
            "PORT": "65535",
            "RELAY_WEB_KEEPALIVE_SECONDS": "300",
            "RELAY_MAINTENANCE_INTERVAL_SECONDS": "600",
        }
    )
    assert settings.dedup_ttl_seconds == 365 * 24 * 3600
    assert (settings.web_keepalive_seconds, settings.maintenance_interval_seconds) == (300, 600)
    assert settings.destination("usercom").read_timeout == 27.0


def test_the_web_keep_alive_reaches_gunicorn() -> None:
    """RELAY_WEB_KEEPALIVE_SECONDS is gunicorn's --keep-alive (5 s unless set)."""

    def keep_alive(env: dict[str, str]) -> str:
        argv = gunicorn_argv(Settings.from_env(env), "127.0.0.1:8000")
        return argv[argv.index("--keep-alive") + 1]

    assert keep_alive(BASE) == "5"
    assert keep_alive({**BASE, "RELAY_WEB_KEEPALIVE_SECONDS": "1"}) == "1"
