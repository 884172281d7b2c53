"""Webhook intake as a plain function: bytes and headers in, an HTTP answer out. One code path
for every source; a `Source` knows its provider's signature and payload.

Order of checks: content type (415), signature (401), JSON (400), envelope and object schema
(422, and the event is dead-lettered as `invalid_payload`), mapping (200 ignored), then one
atomic Redis write (202 accepted / 200 duplicate). Nothing is answered 2xx before Redis has
acknowledged the write; any Redis failure is a 503 and Stripe retries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping as Headers
from dataclasses import dataclass
from typing import Any

from marshmallow import ValidationError
from redis.exceptions import RedisError

from service.dlq import DeadLetter
from service.errors import InvalidPayload, MalformedJson, RelayError, StoreUnavailable, UnsupportedMediaType
from service.metrics import INGEST_SECONDS, WEBHOOKS
from service.sources import Described, Source
from service.store import Store

log = logging.getLogger(__name__)
SAFE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,255}$")  # an event id fit for keys and the DLQ


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


class Ingest:
    def __init__(self, source: Source, store: Store) -> None:
        self.source = source
        self.store = store

    def handle(self, raw: bytes, content_type: str | None, headers: Headers[str, str]) -> Answer:
        """Answer one webhook; every answer is counted by outcome and timed."""
        started = time.perf_counter()
        seen = {"event_type": "unknown"}
        outcome = "internal_error"
        try:
            answer = self._handle(raw, content_type, headers, seen)
            outcome = answer.body["status"]
            return answer
        except RelayError as exc:
            outcome = exc.code
            raise
        finally:
            WEBHOOKS.labels(self.source.name, seen["event_type"], outcome).inc()
            INGEST_SECONDS.labels(self.source.name).observe(time.perf_counter() - started)

    def _handle(self, raw: bytes, content_type: str | None, headers: Headers[str, str], seen: dict[str, str]) -> Answer:
        source = self.source.name
        if not _is_json(content_type):
            raise UnsupportedMediaType("Content-Type must be application/json")
        self.source.verify(raw, headers)
        try:
            payload = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise MalformedJson("request body is not valid JSON") from None
        described = self.source.describe(payload, headers)
        if described.event_type and len(described.event_type) <= 100:
            seen["event_type"] = described.event_type  # signed by the provider: a bounded set of names
        try:
            normalized = self.source.normalize(payload, headers)
        except ValidationError as exc:
            raise self._dead_letter_invalid(raw, payload, described, exc) from None
        update = normalized.update
        if update is None:
            accepted = self._write(self.store.ignore, source, normalized.event_id)
            return Answer(200, {"status": "ignored" if accepted else "duplicate", "event_id": normalized.event_id})
        if self._write(self.store.accept, update):
            log.info(
                "accepted %s %s",
                update.event_type,
                update.event_id,
                extra={
                    "source": source,
                    "event_id": update.event_id,
                    "event_type": update.event_type,
                    "user_id": update.user_id,
                    "outcome": "accepted",
                },
            )
            return Answer(202, {"status": "accepted", "event_id": update.event_id})
        return Answer(200, {"status": "duplicate", "event_id": update.event_id})

    def _dead_letter_invalid(
        self, raw: bytes, payload: Any, described: Described, exc: ValidationError
    ) -> InvalidPayload:
        """Keep the event in the dead-letter queue; the caller answers 422 with the field messages."""
        source = self.source.name
        event_id = described.event_id if described.event_id and SAFE_ID.match(described.event_id) else None
        event_type = described.event_type
        digest = hashlib.sha256(raw).hexdigest()[:32]
        now = time.time()
        item = DeadLetter(
            id=f"{source}-{event_id or digest}",
            reason="invalid_payload",
            source=source,
            event_type=event_type,
            event_id=event_id,
            event_time=described.event_time,
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
            extra={"source": source, "event_id": event_id, "event_type": event_type, "outcome": "invalid_payload"},
        )
        return InvalidPayload(f"payload does not fit the {self.source.title} event schema", details=exc.messages)

    @staticmethod
    def _write(operation: Any, *args: Any) -> Any:
        try:
            return operation(*args)
        except RedisError as exc:
            log.error("redis unavailable: %s", type(exc).__name__)
            raise StoreUnavailable("event store unavailable; retry later") from exc
