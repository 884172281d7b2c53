"""Which reader reads a provider's API, with its key, base URL and default read rate."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from service.backfill import DEFAULT_MAX_RPS, LEMONSQUEEZY_MAX_RPS, PADDLE_MAX_RPS
from service.config import Settings

if TYPE_CHECKING:
    from service.backfill.lemonsqueezy_reader import LemonSqueezyReader
    from service.backfill.paddle_reader import PaddleReader
    from service.backfill.stripe_reader import StripeReader

KEY_VARIABLES = {"stripe": "STRIPE_API_KEY", "paddle": "PADDLE_API_KEY"}  # with an events API: reconcile
# Lemon Squeezy (LEMONSQUEEZY_API_KEY) keeps no event history: `relay sync` reads it, nothing reconciles it.


def has_key(source: str, settings: Settings) -> bool:
    return bool(settings.paddle_api_key if source == "paddle" else settings.stripe_api_key)


def reader_for(
    source: str, settings: Settings, max_rps: float | None = None, stop: threading.Event | None = None
) -> StripeReader | PaddleReader | LemonSqueezyReader:
    """Imported on use: stripe (and urllib3 paging) cost nothing to a process that never reads back.
    `stop` (Ctrl-C) ends the reader's waits between reads at once."""
    stop = threading.Event() if stop is None else stop
    if source == "lemonsqueezy":
        from service.backfill.lemonsqueezy_reader import LemonSqueezyReader

        rate = max_rps or LEMONSQUEEZY_MAX_RPS
        return LemonSqueezyReader(
            settings.lemonsqueezy_api_key, settings.lemonsqueezy_api_base, max_rps=rate, stop=stop
        )
    if source == "paddle":
        from service.backfill.paddle_reader import PaddleReader

        rate = max_rps or PADDLE_MAX_RPS
        return PaddleReader(settings.paddle_api_key, settings.paddle_api_base, max_rps=rate, stop=stop)
    from service.backfill.stripe_reader import StripeReader

    rate = max_rps or DEFAULT_MAX_RPS
    return StripeReader(settings.stripe_api_key, settings.stripe_api_base, max_rps=rate, stop=stop)
