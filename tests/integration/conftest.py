"""Fixtures of the integration tests: a delivery context on the test Redis (`ctx`), and, for the tests
that read back from Stripe's, Paddle's and Lemon Squeezy's APIs, their doubles and the environment pointing
`relay backfill|sync|reconcile` at them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis import Redis

from service.config import Settings
from service.devtools.lemonsqueezy_api import LemonSqueezyApiServer
from service.devtools.paddle_api import PaddleApiServer
from service.devtools.stripe_api import StripeApiServer
from workers.delivery.context import DeliveryContext, configure
from workers.runner import build_context

API_KEY = "rk_test_backfill_readonly_51Hx"
PADDLE_KEY = "pdl_sdbx_apikey_01jtest0readonly0events_Xy9"
LEMONSQUEEZY_KEY = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.test-mode-lemon-key.Zq7"


@pytest.fixture
def ctx(settings: Settings, redis: Redis) -> Iterator[DeliveryContext]:
    """What a User.com delivery worker holds, configured as the worker process configures it."""
    context = build_context(settings, "usercom")
    configure(context)
    yield context
    context.redis.close()


@pytest.fixture
def stripe_api() -> Iterator[StripeApiServer]:
    server = StripeApiServer(API_KEY).start()
    yield server
    server.stop()


@pytest.fixture
def api_env(env: dict[str, str], stripe_api: StripeApiServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    full = {**env, "STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": stripe_api.base_url}
    for name, value in full.items():
        monkeypatch.setenv(name, value)
    return full


@pytest.fixture
def paddle_api() -> Iterator[PaddleApiServer]:
    server = PaddleApiServer(PADDLE_KEY).start()
    yield server
    server.stop()


@pytest.fixture
def paddle_env(env: dict[str, str], paddle_api: PaddleApiServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    full = {**env, "PADDLE_API_KEY": PADDLE_KEY, "PADDLE_API_BASE": paddle_api.base_url}
    for name, value in full.items():
        monkeypatch.setenv(name, value)
    return full


@pytest.fixture
def lemonsqueezy_api() -> Iterator[LemonSqueezyApiServer]:
    server = LemonSqueezyApiServer(LEMONSQUEEZY_KEY).start()
    yield server
    server.stop()


@pytest.fixture
def lemonsqueezy_env(
    env: dict[str, str], lemonsqueezy_api: LemonSqueezyApiServer, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    full = {**env, "LEMONSQUEEZY_API_KEY": LEMONSQUEEZY_KEY, "LEMONSQUEEZY_API_BASE": lemonsqueezy_api.base_url}
    for name, value in full.items():
        monkeypatch.setenv(name, value)
    return full
