"""Fixtures of the integration tests that read back from Stripe's API: its double, and the
environment pointing `relay backfill|sync|reconcile` at it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.devtools.stripe_api import StripeApiServer

API_KEY = "rk_test_backfill_readonly_51Hx"


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
