"""Stripe webhook intake as a plain function: bytes and headers in, an HTTP answer out.

Order of checks: content type (415), signature (401), JSON (400), envelope and object schema
(422, and the event is dead-lettered as `invalid_payload`), mapping (200 ignored), then one
atomic Redis write (202 accepted / 200 duplicate). Nothing is answered 2xx before Redis has
acknowledged the write; any Redis failure is a 503 and Stripe retries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from marshmallow import ValidationError
from redis.exceptions import RedisError

from service.config import Settings
from service.dlq import DeadLetter
from service.errors import InvalidPayload, MalformedJson, RelayError, StoreUnavailable, UnsupportedMediaType
from service.metrics import INGEST_SECONDS, WEBHOOKS
from service.signatures import verify_stripe_signature
from service.store import Store
from service.stripe_normalize import SOURCE, normalize_event
from service.stripe_schemas import STRIPE_ID

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


class StripeIngest:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store

    def handle(self, raw: bytes, content_type: str | None, signature: str | None) -> Answer:
        """Answer one webhook; every answer is counted by outcome and timed."""
        started = time.perf_counter()
        seen = {"event_type": "unknown"}
        outcome = "internal_error"
        try:
            answer = self._handle(raw, content_type, signature, seen)
            outcome = answer.body["status"]
            return answer
        except RelayError as exc:
            outcome = exc.code
            raise
        finally:
            WEBHOOKS.labels(SOURCE, seen["event_type"], outcome).inc()
            INGEST_SECONDS.labels(SOURCE).observe(time.perf_counter() - started)

    def _handle(self, raw: bytes, content_type: str | None, signature: str | None, seen: dict[str, str]) -> Answer:
        if not _is_json(content_type):
            raise UnsupportedMediaType("Content-Type must be application/json")
        verify_stripe_signature(
            raw, signature, self.settings.stripe_webhook_secrets, tolerance=self.settings.stripe_tolerance_seconds
        )
        try:
            payload = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise MalformedJson("request body is not valid JSON") from None
        if isinstance(payload, dict) and isinstance(payload.get("type"), str) and len(payload["type"]) <= 100:
            seen["event_type"] = payload["type"]  # signed by Stripe: a bounded set of names
        try:
            normalized = normalize_event(payload, self.settings.mapping, self.settings.identity_key)
        except ValidationError as exc:
            raise self._dead_letter_invalid(raw, payload, exc) from None
        update = normalized.update
        if update is None:
            accepted = self._write(self.store.ignore, SOURCE, normalized.event_id)
            return Answer(200, {"status": "ignored" if accepted else "duplicate", "event_id": normalized.event_id})
        if self._write(self.store.accept, update):
            log.info(
                "accepted %s %s",
                update.event_type,
                update.event_id,
                extra={
                    "source": SOURCE,
                    "event_id": update.event_id,
                    "event_type": update.event_type,
                    "user_id": update.user_id,
                    "outcome": "accepted",
                },
            )
            return Answer(202, {"status": "accepted", "event_id": update.event_id})
        return Answer(200, {"status": "duplicate", "event_id": update.event_id})

    def _dead_letter_invalid(self, raw: bytes, payload: Any, exc: ValidationError) -> InvalidPayload:
        """Keep the event in the dead-letter queue; the caller answers 422 with the field messages."""
        envelope = payload if isinstance(payload, dict) else {}
        event_id = envelope.get("id")
        digest = hashlib.sha256(raw).hexdigest()[:32]
        if not (isinstance(event_id, str) and _valid_id(event_id)):
            event_id = None
        event_type = envelope.get("type") if isinstance(envelope.get("type"), str) else None
        created = envelope.get("created") if isinstance(envelope.get("created"), int) else None
        now = time.time()
        item = DeadLetter(
            id=f"{SOURCE}-{event_id or digest}",
            reason="invalid_payload",
            source=SOURCE,
            event_type=event_type,
            event_id=event_id,
            event_time=created,
            message="payload does not fit the schema",
            event=payload,
            first_failure_at=now,
            last_failure_at=now,
            last_response=json.dumps(exc.messages)[:4000],
        )
        self._write(self.store.reject, item, event_id or digest)
        log.warning(
            "invalid payload %s %s: %s",
            event_type,
            event_id or digest,
            exc.messages,
            extra={"source": SOURCE, "event_id": event_id, "event_type": event_type, "outcome": "invalid_payload"},
        )
        return InvalidPayload("payload does not fit the Stripe event schema", details=exc.messages)

    @staticmethod
    def _write(operation: Any, *args: Any) -> Any:
        try:
            return operation(*args)
        except RedisError as exc:
            log.error("redis unavailable: %s", type(exc).__name__)
            raise StoreUnavailable("event store unavailable; retry later") from exc


def _valid_id(value: str) -> bool:
    try:
        STRIPE_ID(value)
    except ValidationError:
        return False
    return True
