"""Webhook sources: how each provider's request is authenticated and read.

A source checks its signature headers, then turns the parsed JSON into a normalized update.
Only sources with a secret configured get an endpoint (`Settings.webhook_sources`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping as Headers
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

from marshmallow import ValidationError

from service import lemonsqueezy_normalize, paddle_normalize, standard_events, stripe_normalize
from service.config import Settings
from service.normalize import Normalized
from service.signatures import (
    standard_webhook_key,
    verify_lemonsqueezy_signature,
    verify_paddle_signature,
    verify_standard_webhook,
    verify_stripe_signature,
)


@dataclass(frozen=True)
class Described:
    """What can be told of an event that did not validate, to file it in the dead-letter queue."""

    event_id: str | None
    event_type: str | None
    event_time: int | None


class Source(Protocol):
    name: str
    title: str

    def verify(self, raw: bytes, headers: Headers[str, str]) -> None: ...

    def normalize(self, payload: Any, headers: Headers[str, str]) -> Normalized: ...

    def describe(self, payload: Any, headers: Headers[str, str]) -> Described: ...


def _str(value: Any, limit: int = 255) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= limit else None


def _iso_seconds(value: Any) -> int | None:
    try:
        return int(dt.datetime.fromisoformat(value).timestamp()) if isinstance(value, str) else None
    except ValueError:
        return None


@dataclass(frozen=True)
class StripeSource:
    settings: Settings
    name: str = "stripe"
    title: str = "Stripe"

    def verify(self, raw: bytes, headers: Headers[str, str]) -> None:
        verify_stripe_signature(
            raw,
            headers.get("Stripe-Signature"),
            self.settings.stripe_webhook_secrets,
            tolerance=self.settings.stripe_tolerance_seconds,
        )

    def normalize(self, payload: Any, headers: Headers[str, str]) -> Normalized:
        return stripe_normalize.normalize_event(payload, self.settings.mapping, self.settings.identity_key)

    def describe(self, payload: Any, headers: Headers[str, str]) -> Described:
        envelope = payload if isinstance(payload, dict) else {}
        created = envelope.get("created")
        return Described(
            _str(envelope.get("id")), _str(envelope.get("type")), created if isinstance(created, int) else None
        )


@dataclass(frozen=True)
class StandardSource:
    settings: Settings
    name: str = "standard"
    title: str = "Standard Webhooks"

    @cached_property
    def keys(self) -> list[bytes]:
        """The secrets' HMAC keys, decoded once (Settings checked they decode)."""
        return [standard_webhook_key(s) for s in self.settings.standard_webhook_secrets]

    def verify(self, raw: bytes, headers: Headers[str, str]) -> None:
        verify_standard_webhook(
            raw,
            headers.get("webhook-id"),
            headers.get("webhook-timestamp"),
            headers.get("webhook-signature"),
            self.keys,
            tolerance=self.settings.standard_tolerance_seconds,
        )

    def normalize(self, payload: Any, headers: Headers[str, str]) -> Normalized:
        webhook_id = headers.get("webhook-id", "")
        try:
            standard_events.WEBHOOK_ID(webhook_id)
        except ValidationError as exc:
            raise ValidationError({"webhook-id": exc.messages}) from None
        return standard_events.normalize_event(payload, webhook_id)

    def describe(self, payload: Any, headers: Headers[str, str]) -> Described:
        envelope = payload if isinstance(payload, dict) else {}
        webhook_id = headers.get("webhook-id")
        try:
            standard_events.WEBHOOK_ID(webhook_id or "")
        except ValidationError:
            webhook_id = None
        return Described(webhook_id, _str(envelope.get("type")), _iso_seconds(envelope.get("timestamp")))


@dataclass(frozen=True)
class PaddleSource:
    settings: Settings
    name: str = "paddle"
    title: str = "Paddle Billing"

    def verify(self, raw: bytes, headers: Headers[str, str]) -> None:
        verify_paddle_signature(
            raw,
            headers.get("Paddle-Signature"),
            self.settings.paddle_webhook_secrets,
            tolerance=self.settings.paddle_tolerance_seconds,
        )

    def normalize(self, payload: Any, headers: Headers[str, str]) -> Normalized:
        return paddle_normalize.normalize_event(payload, self.settings.mapping, self.settings.identity_key)

    def describe(self, payload: Any, headers: Headers[str, str]) -> Described:
        envelope = payload if isinstance(payload, dict) else {}
        return Described(
            _str(envelope.get("event_id")), _str(envelope.get("event_type")), _iso_seconds(envelope.get("occurred_at"))
        )


@dataclass(frozen=True)
class LemonSqueezySource:
    settings: Settings
    name: str = "lemonsqueezy"
    title: str = "Lemon Squeezy"

    def verify(self, raw: bytes, headers: Headers[str, str]) -> None:
        verify_lemonsqueezy_signature(raw, headers.get("X-Signature"), self.settings.lemonsqueezy_webhook_secrets)

    def normalize(self, payload: Any, headers: Headers[str, str]) -> Normalized:
        return lemonsqueezy_normalize.normalize_event(payload, self.settings.mapping, self.settings.identity_key)

    def describe(self, payload: Any, headers: Headers[str, str]) -> Described:
        envelope = payload if isinstance(payload, dict) else {}
        meta = envelope.get("meta") if isinstance(envelope.get("meta"), dict) else {}
        return Described(None, _str(meta.get("event_name")), None)  # no event id without a valid body


SOURCE_CLASSES: dict[str, type[StripeSource | StandardSource | PaddleSource | LemonSqueezySource]] = {
    "stripe": StripeSource,
    "standard": StandardSource,
    "paddle": PaddleSource,
    "lemonsqueezy": LemonSqueezySource,
}


def source_for(name: str, settings: Settings) -> Source:
    """Any known source, configured or not (reading a kept event needs no secret)."""
    return SOURCE_CLASSES[name](settings)


def configured_sources(settings: Settings) -> dict[str, Source]:
    return {name: source_for(name, settings) for name in settings.webhook_sources}
