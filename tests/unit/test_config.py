from __future__ import annotations

from pathlib import Path

import pytest

from service.config import Settings, SettingsError

BASE = {
    "REDIS_URL": "redis://:hunter2@localhost:6379/0",
    "STRIPE_WEBHOOK_SECRETS": "whsec_one, whsec_two",
    "USERCOM_API_URL": "https://acme.user.com/api/public/",
    "USERCOM_API_KEY": "secret-api-key",
}


def settings(**overrides: str) -> Settings:
    env = {**BASE, **overrides}
    return Settings.from_env({k: v for k, v in env.items() if v is not None})


def test_reads_and_normalizes_the_environment() -> None:
    s = settings()
    assert s.source_secrets("stripe") == ("whsec_one", "whsec_two")
    assert s.destination("usercom").api_url == "https://acme.user.com/api/public"
    assert s.source("stripe").tolerance_seconds == 300
    assert s.identity_key == "user_id"
    assert "customer.created" in s.mapping.rules["stripe"]
    assert s.webhook_sources == ("stripe",)


def test_repr_never_shows_secrets() -> None:
    text = repr(settings())
    for secret in ("whsec_one", "secret-api-key"):
        assert secret not in text


@pytest.mark.parametrize(
    ("env", "passwords"),
    [
        ({"REDIS_URL": "redis://:pass%40word@redis:6379/0"}, ["pass%40word", "pass@word"]),
        (
            {"REDIS_URL": "redis://:master-pw@x/0", "REDIS_SENTINELS": "s1:26379", "REDIS_SENTINEL_MASTER": "m",
             "REDIS_SENTINEL_PASSWORD": "sentinel/pw"},
            ["master-pw", "sentinel/pw", "sentinel%2Fpw"],
        ),
    ],
)  # fmt: skip
def test_redis_passwords_are_secrets_redacted_and_never_in_repr(env: dict[str, str], passwords: list[str]) -> None:
    s = settings(**env)
    assert all(p in s.secrets for p in passwords)
    assert not any(p in repr(s) for p in passwords)


def test_the_lemonsqueezy_api_key_is_a_secret_redacted_and_never_in_repr() -> None:
    s = settings(LEMONSQUEEZY_API_KEY="eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.lsq")
    assert "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.lsq" in s.secrets
    assert "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9" not in repr(s)
    assert (settings().lemonsqueezy_api_key, settings().lemonsqueezy_api_base) == ("", "https://api.lemonsqueezy.com")


def test_a_redis_password_too_short_to_redact_is_not_redacted() -> None:
    """Replacing every "0" of a log line would mangle its times and ids, and hide nothing."""
    assert "0" not in settings(REDIS_URL="redis://:0@redis:6379/0").secrets


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("REDIS_URL", "", "REDIS_URL is required"),
        ("REDIS_URL", "http://:hunter2@x", "REDIS_URL must start with"),
        ("REDIS_URL", "redis://:hunter2@x/0?ssl_cert_reqs=required", "takes no option ssl_cert_reqs with redis://"),
        ("REDIS_URL", "redis://:hunter2@x/0?socket_timeout=-1", "socket_timeout must be a number of seconds above 0"),
        ("REDIS_URL", "redis://:hunter2@x/0?socket_timeout=1e400", "socket_timeout must be a number of seconds"),
        ("REDIS_URL", "rediss://:hunter2@x/0?ssl_cert_reqs=bogus", "Invalid SSL Certificate Requirements Flag"),
        ("REDIS_URL", "redis://:hunter2@x/0?protocol=4", "protocol must be either 2 or 3"),
        ("REDIS_URL", "redis://:hunter2@x/abc", "the database must be a number, as in /0, got /abc"),
        ("REDIS_URL", "redis://x/0/1", "the database must be a number, as in /0, got /0/1"),
        ("STRIPE_WEBHOOK_SECRETS", "", "no webhook source is configured: set at least one of STRIPE_WEBHOOK_SECRETS"),
        ("STRIPE_WEBHOOK_SECRETS", "whsec_ok,sk_live_oops", "secret #2 is not usable: a Stripe signing secret"),
        ("STANDARD_WEBHOOK_SECRETS", "whsec_ok,sk_live_oops", "secret #1 is not usable: whsec_ secret is not base64"),
        ("PADDLE_WEBHOOK_SECRETS", "pdl_ntfset_ok,,", "PADDLE_WEBHOOK_SECRETS: secret #2 is not usable: it is empty"),
        ("PADDLE_TOLERANCE_SECONDS", "0", "PADDLE_TOLERANCE_SECONDS must be at least 1"),
        ("USERCOM_API_URL", "", "USERCOM_API_URL is required"),
        ("USERCOM_API_URL", "acme.user.com", "must be an http(s) URL"),
        ("USERCOM_API_KEY", "", "USERCOM_API_KEY is required"),
        ("USERCOM_API_KEY", "secret-api-key\u200b", "USERCOM_API_KEY holds a character that is not printable ASCII"),
        ("STRIPE_API_KEY", "sk_test_\u00e9", "STRIPE_API_KEY holds a character that is not printable ASCII"),
        ("PADDLE_API_KEY", "pdl_\u0000", "PADDLE_API_KEY holds a character that is not printable ASCII"),
        ("LEMONSQUEEZY_API_KEY", "ey\u00e9", "LEMONSQUEEZY_API_KEY holds a character that is not printable ASCII"),
        ("LEMONSQUEEZY_API_BASE", "api.lemonsqueezy.com", "must be an http(s) URL"),
        ("RELAY_ADMIN_TOKEN", "t\u00f6ken", "RELAY_ADMIN_TOKEN holds a character that is not printable ASCII"),
        ("STRIPE_TOLERANCE_SECONDS", "soon", "STRIPE_TOLERANCE_SECONDS must be a whole number"),
        ("STRIPE_TOLERANCE_SECONDS", "0", "must be at least 1"),
        ("RELAY_DEDUP_TTL_SECONDS", "3600", "RELAY_DEDUP_TTL_SECONDS must be at least 259200"),
        ("RELAY_LOG_LEVEL", "chatty", "RELAY_LOG_LEVEL must be one of"),
        ("RELAY_MAPPING_FILE", "/nonexistent/mapping.toml", "RELAY_MAPPING_FILE: cannot read"),
        ("RELAY_RETRY_BASE_SECONDS", "-1", "must be greater than 0"),
        ("PORT", "70000", "PORT must be at most 65535"),
        ("RELAY_METRICS_BIND", "\udcff", "RELAY_METRICS_BIND is not valid UTF-8"),
        ("RELAY_METRICS_BIND", "0.0.0.0:9100", "RELAY_METRICS_BIND must be an IP address or a host name (no port)"),
        ("RELAY_METRICS_BIND", "-host", "RELAY_METRICS_BIND must be an IP address or a host name (no port)"),
        ("USERCOM_API_URL", "http://h/ secret-api-key", "USERCOM_API_URL must not contain whitespace"),
        ("USERCOM_READ_TIMEOUT_SECONDS", "28", "USERCOM_CONNECT_TIMEOUT_SECONDS + USERCOM_READ_TIMEOUT_SECONDS must"),
        ("USERCOM_CONNECT_TIMEOUT_SECONDS", "31", "USERCOM_CONNECT_TIMEOUT_SECONDS must be greater than 0 and at most"),
    ],
)
def test_bad_settings_stop_with_a_one_line_reason(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        settings(**{name: value})
    text = str(caught.value)
    assert message in text
    assert "\n" not in text
    for secret in ("hunter2", "sk_live_oops", "secret-api-key"):
        assert secret not in text


def test_each_role_needs_only_its_own_secrets() -> None:
    web = Settings.from_env({"REDIS_URL": "redis://x", "STRIPE_WEBHOOK_SECRETS": "whsec_a"}, role="web")
    assert web.destination("usercom").credential == ""
    worker = Settings.from_env(
        {"REDIS_URL": "redis://x", "USERCOM_API_URL": "http://u", "USERCOM_API_KEY": "k"}, role="worker"
    )
    assert worker.source_secrets("stripe") == ()
    with pytest.raises(SettingsError, match="no webhook source is configured"):
        Settings.from_env({"REDIS_URL": "redis://x"}, role="web")
    paddle_only = Settings.from_env({"REDIS_URL": "redis://x", "PADDLE_WEBHOOK_SECRETS": "pdl_a,pdl_b"}, role="web")
    assert paddle_only.webhook_sources == ("paddle",) and paddle_only.source("paddle").tolerance_seconds == 5
    assert paddle_only.secrets == ("pdl_a", "pdl_b")


def test_mapping_file_override_is_loaded(tmp_path: Path) -> None:
    mapping = tmp_path / "mapping.toml"
    mapping.write_text('[stripe."invoice.paid"]\nextract = "invoice"\ntags = ["customer-paid"]\n')
    s = settings(RELAY_MAPPING_FILE=str(mapping))
    assert list(s.mapping.rules) == ["stripe"] and list(s.mapping.rules["stripe"]) == ["invoice.paid"]
    assert s.mapping.rules["stripe"]["invoice.paid"].tags == ("customer-paid",)


def test_destinations_and_what_each_needs() -> None:
    base = {"REDIS_URL": "redis://x"}
    assert Settings.from_env(base, role="admin").destinations == ("usercom",)
    with pytest.raises(SettingsError, match="RELAY_DESTINATIONS must list destinations from usercom, userkit"):
        Settings.from_env({**base, "RELAY_DESTINATIONS": "usercom,hubspot"}, role="admin")
    with pytest.raises(SettingsError, match="USERKIT_APP_SECRET is required"):
        Settings.from_env({**base, "RELAY_DESTINATIONS": "userkit"}, role="worker")
    only_userkit = Settings.from_env(
        {**base, "RELAY_DESTINATIONS": " UserKit ", "USERKIT_APP_SECRET": "uk_secret"}, role="worker"
    )
    assert (
        only_userkit.destinations == ("userkit",) and only_userkit.destination("usercom").credential == ""
    )  # User.com not needed
    assert (
        only_userkit.destination("userkit").api_url == "https://api.userkit.io" and "uk_secret" in only_userkit.secrets
    )
    both = settings(RELAY_DESTINATIONS="usercom,userkit,usercom", USERKIT_APP_SECRET="uk", USERKIT_RATE_LIMIT="2")
    assert both.destinations == ("usercom", "userkit") and both.destination("userkit").rate_limit == 2.0


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("USERCOM_API_URL", "admin:hunter2@acme.user.com/api", "must be an http(s) URL, got '***@acme.user.com/api'"),
        ("USERCOM_API_URL", "https:/admin:hunter2@acme.user.com", "must be an http(s) URL, got '***@acme.user.com'"),
        ("STRIPE_API_BASE", "sk_live_hunter2@api.stripe.com", "must be an http(s) URL, got '***@api.stripe.com'"),
        ("REDIS_URL", "redis://:hunter2@[::1:6379/0", "is not a usable Redis URL: its host cannot be read"),
        ("USERCOM_API_URL", "https://[::1/api/public", "is not a usable URL: its host cannot be read"),
        ("PADDLE_API_BASE", "http://admin:hunter2@[not-ipv6]/", "is not a usable URL: its host cannot be read"),
    ],
)
def test_a_malformed_url_is_one_line_naming_it_and_never_its_password(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        settings(**{name: value})
    text = str(caught.value)
    assert text.startswith(f"{name} {message}"), text
    assert "\n" not in text and "hunter2" not in text


@pytest.mark.parametrize("name", ["STRIPE_WEBHOOK_SECRETS", "USERCOM_API_KEY", "REDIS_URL", "RELAY_LOG_LEVEL"])
def test_a_value_that_is_not_utf8_is_one_line_naming_it(name: str) -> None:
    """os.environ keeps bytes that are not UTF-8 as lone surrogates: never encodable, never a secret to send."""
    not_utf8 = b"whsec_\xff\xfe".decode("utf-8", "surrogateescape")
    with pytest.raises(SettingsError, match=f"^{name} is not valid UTF-8$"):
        settings(**{name: not_utf8})


@pytest.mark.parametrize(
    "url",
    ["rediss://:pw@redis:6380/2?ssl_cert_reqs=required", "unix:///run/redis.sock?db=3", "redis://redis", "redis://r/"],
)
def test_redis_urls_redis_py_connects_with_are_accepted(url: str) -> None:
    assert settings(REDIS_URL=url).redis_url == url


@pytest.mark.parametrize("address", ["127.0.0.1", "::", "::1", "metrics.internal", "localhost"])
def test_the_worker_metrics_listen_on_an_address_or_host_name(address: str) -> None:
    assert settings(RELAY_METRICS_BIND=address).metrics_bind == address


def test_a_sentinel_password_is_no_header_and_may_be_any_text() -> None:
    env = {"REDIS_SENTINELS": "s1:26379", "REDIS_SENTINEL_MASTER": "m", "REDIS_SENTINEL_PASSWORD": "p\u00e4sswort"}
    assert "p\u00e4sswort" in settings(**env).secrets
