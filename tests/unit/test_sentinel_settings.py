"""REDIS_SENTINELS / REDIS_SENTINEL_MASTER: validated, one-line errors, folded into one URL."""

from __future__ import annotations

import pytest

from service.config import Settings, SettingsError
from service.store.sentinel_url import parse_sentinel_url

WEB = {"STRIPE_WEBHOOK_SECRETS": "whsec_x"}


def test_sentinels_replace_redis_url_and_keep_its_credentials() -> None:
    env = {
        **WEB,
        "REDIS_SENTINELS": "10.0.0.1:26379,redis-sentinel.ns.svc:26380",
        "REDIS_SENTINEL_MASTER": "relay",
        "REDIS_SENTINEL_PASSWORD": "s3nt",
        "REDIS_URL": "redis://relay:p%40ss@ignored:6379/2",
    }
    target = parse_sentinel_url(Settings.from_env(env, role="web").redis_url)
    assert target is not None
    assert target.sentinels == (("10.0.0.1", 26379), ("redis-sentinel.ns.svc", 26380))
    assert (target.master, target.username, target.password, target.db) == ("relay", "relay", "p@ss", 2)
    assert target.sentinel_password == "s3nt"
    minimal = {**WEB, "REDIS_SENTINELS": "h:1", "REDIS_SENTINEL_MASTER": "m"}
    alone = parse_sentinel_url(Settings.from_env(minimal, role="web").redis_url)
    assert alone is not None and (alone.password, alone.db) == (None, 0)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REDIS_SENTINELS": "h"}, "REDIS_SENTINELS must be a comma-separated list of host:port"),
        ({"REDIS_SENTINELS": "h:0"}, "REDIS_SENTINELS must be"),
        ({"REDIS_SENTINELS": "h:1,:2"}, "REDIS_SENTINELS must be"),
        ({"REDIS_SENTINELS": "h:1"}, "REDIS_SENTINEL_MASTER is required"),
        ({"REDIS_SENTINELS": "h:1", "REDIS_SENTINEL_MASTER": "m", "REDIS_URL": "redis://h/x"}, "REDIS_URL"),
    ],
)
def test_bad_sentinel_settings_are_one_line_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        Settings.from_env({**WEB, **env, "REDIS_SENTINEL_PASSWORD": "secret-value"}, role="web")
    assert "\n" not in str(caught.value) and "secret-value" not in str(caught.value)
