"""Webhook intake as a plain function: bytes and headers in, an `Outcome` out. One code path for
every source; the web layer alone picks HTTP statuses (service/web).

Order of checks: content type, signature (the source), JSON, the provider's envelope (the source)
and what the event sets (the mapping) — a payload that does not fit is dead-lettered as
`invalid_payload` and refused with InvalidPayload — then one atomic Redis write (the store):
accepted, or a duplicate. Nothing is accepted before Redis has acknowledged the write; a Redis
failure propagates (the web answers 503 and the sender retries).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping as Headers
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from marshmallow import ValidationError
from redis.exceptions import RedisError

from service.config.settings import DEFAULT_MAX_CLOCK_SKEW_SECONDS
from service.core.dead_letter import IDENTITY_CONFLICT, DeadLetter
from service.core.errors import InvalidPayload, MalformedJson, RelayError, StoreUnavailable, UnsupportedMediaType
from service.core.payload_shape import MAX_DEPTH, may_hold_surrogates, shape_problem
from service.core.update import EVENT_ID, EVENT_ID_RULE, UserUpdate, user_id_problem
from service.mapping import Mapping
from service.ops.logs import EverySeconds
from service.ops.metrics import INGEST_SECONDS, WEBHOOKS
from service.sources.base import Described, Envelope, Source
from service.store.customer_map import IdentityConflict
from service.store.durability import DurableAck
from service.store.ledger import Store
from service.store.ledger_user import unresolved

log = logging.getLogger(__name__)
REFUSAL_LOG_SECONDS = 10.0
REFUSALS = EverySeconds(REFUSAL_LOG_SECONDS)  # the refusals logged (InvalidPayload: with its dead letter)


class Outcome(StrEnum):
    ACCEPTED = "accepted"  # durably queued for delivery
    DUPLICATE = "duplicate"  # accepted before
    IGNORED = "ignored"  # valid, but the mapping does not use its type
    IDENTITY_CONFLICT = "identity_conflict"  # kept in the dead-letter queue: its customer is another user's
    UNRESOLVED_IDENTITY = "unresolved_identity"  # kept in the dead-letter queue: it names no user and no customer


@dataclass(frozen=True)
class Received:
    outcome: Outcome
    event_id: str


def read_event(
    source: Source,
    mapping: Mapping,
    identity_key: str,
    payload: Any,
    headers: Headers[str, str],
    trusted: frozenset[str] = frozenset(),
    *,
    max_clock_skew: int,
) -> tuple[Envelope, UserUpdate | None]:
    """The provider's envelope and the update the mapping makes of it (None: not mapped).
    Raises marshmallow's ValidationError when either does not fit, or when the event is dated more
    than `max_clock_skew` seconds ahead (RELAY_MAX_CLOCK_SKEW_SECONDS): every way in (a webhook, a
    backfill, a replay of an invalid payload) refuses it. `trusted`: the buyer-settable identity
    fields that may name the user (RELAY_TRUSTED_IDENTITY_FIELDS)."""
    envelope = source.envelope(payload, headers)
    check_envelope(envelope)
    check_event_time(envelope, time.time(), max_clock_skew)
    try:
        return envelope, mapping.to_update(source.name, envelope, identity_key, trusted)
    except (ValueError, ArithmeticError) as exc:  # e.g. a timestamp past year 9999, a Decimal overflow
        raise ValidationError({"_schema": [f"A value is out of range ({type(exc).__name__})."]}) from None


def check_envelope(envelope: Envelope) -> None:
    """What every source's envelope must be, whatever the provider allows: an event id the relay
    stores as it is (keys, job ids, the dead-letter queue), never mangled."""
    if not (isinstance(envelope.event_id, str) and EVENT_ID.match(envelope.event_id)):
        raise ValidationError({"id": [f"The event id must be {EVENT_ID_RULE}"]})


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


def conflict_item(update: UserUpdate, exc: IdentityConflict) -> DeadLetter:
    """The dead-letter item of an event that would re-point a learned customer to another user."""
    now = time.time()
    return DeadLetter(
        id=f"{update.source}-{update.event_id}",
        reason=IDENTITY_CONFLICT,
        source=update.source,
        event_type=update.event_type,
        event_id=update.event_id,
        event_time=update.event_time,
        message=f"{exc}; the event names user {update.user_id}: not re-pointed, not delivered",
        update=update.to_dict(),
        user_id=update.user_id,
        first_failure_at=now,
        last_failure_at=now,
    )


def named_user(payload: Any, identity_key: str, depth: int = 4) -> str | None:
    """The user id an event names under `identity_key` in its first `depth` levels (Stripe's
    data.object.metadata, Paddle's and Lemon Squeezy's custom_data, Standard Webhooks' data), as far as
    it can be read from a payload its schema refuses: what its dead letter is filed under for an
    operator's search (`relay dlq list --user`), never whom anything is delivered to."""
    level = [payload]
    for _ in range(depth):
        below: list[Any] = []
        for node in level:
            if not isinstance(node, dict):
                below.extend(node if isinstance(node, list) else ())
                continue
            value = node.get(identity_key)
            if isinstance(value, str | int) and not isinstance(value, bool):
                user_id = str(value).strip()
                if user_id and not user_id_problem(user_id):
                    return user_id
            below.extend(node.values())
        level = below
    return None


def invalid_item(
    source: str,
    key: str,
    event_id: str | None,
    described: Described,
    payload: Any,
    exc: ValidationError,
    message: str,
    *,
    user_id: str | None = None,
) -> DeadLetter:
    """The dead-letter item of an event its schema refuses (`key`: its event id, or what stands for it;
    `user_id`: the user it seems to name, named_user's)."""
    now = time.time()
    return DeadLetter(
        id=f"{source}-{key}",
        reason="invalid_payload",
        source=source,
        event_type=described.event_type,
        event_id=event_id,
        event_time=described.event_time,
        message=message,
        event=payload,
        first_failure_at=now,
        last_failure_at=now,
        last_response=json.dumps(exc.messages)[:4000],
        user_id=user_id,
    )


def check_event_time(envelope: Envelope, now: float, max_clock_skew: int) -> None:
    """An event time from the future would win last-writer-wins against every later event."""
    if envelope.event_time > now + max_clock_skew:
        raise ValidationError(
            {"event_time": [f"The event time is more than {max_clock_skew} s ahead of the relay's clock."]}
        )


class Intake:
    def __init__(
        self,
        source: Source,
        store: Store,
        mapping: Mapping,
        identity_key: str,
        *,
        max_clock_skew: int = DEFAULT_MAX_CLOCK_SKEW_SECONDS,
        trusted_identity_fields: frozenset[str] = frozenset(),
        durable: DurableAck | None = None,
    ) -> None:
        self.source = source
        self.store = store
        self.mapping = mapping
        self.identity_key = identity_key
        self.max_clock_skew = max_clock_skew
        self.trusted = trusted_identity_fields
        self.durable = durable or DurableAck(None)  # RELAY_DURABLE_ACK

    def receive(self, raw: bytes, content_type: str | None, headers: Headers[str, str]) -> Received:
        """Take one webhook; every outcome and error is counted and timed."""
        started = time.perf_counter()
        seen = {"event_type": "unknown"}
        outcome = "internal_error"
        try:
            received = self._receive(raw, content_type, headers, seen)
            self.durable.wait()  # RELAY_DURABLE_ACK: on disk, or on a replica, before any 2xx
            outcome = received.outcome.value
            return received
        except RelayError as exc:
            outcome = exc.code
            # A wrong secret (or a sender's bug) is seen in the logs, not only in a metric; once every
            # REFUSAL_LOG_SECONDS per source and code, with the count since (the endpoint is public).
            if (
                not isinstance(exc, InvalidPayload)
                and (held := REFUSALS.take((self.source.name, exc.code))) is not None
            ):
                log.warning(
                    "refused a %s webhook: %s (%s)%s",
                    self.source.name,
                    exc.message,
                    exc.code,
                    f"; {held} more like it since the last such line" if held else "",
                    extra={"source": self.source.name, "outcome": exc.code},
                )
            raise
        except RedisError:
            outcome = StoreUnavailable.code
            raise
        finally:
            WEBHOOKS.labels(self.source.name, seen["event_type"], outcome).inc()
            INGEST_SECONDS.labels(self.source.name).observe(time.perf_counter() - started)

    def _type_label(self, event_type: str) -> str:
        """A metrics label per type the mapping names (any string a signed provider event carries there
        would be a series of its own), or per type of a source without a mapping (our own systems')."""
        named = self.mapping.rules.get(self.source.name)
        if named is None:
            return event_type if len(event_type) <= 100 else "other"
        return event_type if event_type in named else "other"

    def _receive(
        self, raw: bytes, content_type: str | None, headers: Headers[str, str], seen: dict[str, str]
    ) -> Received:
        if not _is_json(content_type):
            raise UnsupportedMediaType("Content-Type must be application/json")
        self.source.verify(raw, headers)
        try:
            # UTF-8 only (RFC 8259 8.1): json.loads(bytes) would also read UTF-16/32, whose escapes the
            # lone-surrogate check (may_hold_surrogates) does not see. A leading BOM is ignored, as before.
            payload = json.loads(raw.decode("utf-8-sig"))
        except RecursionError:
            payload, problem = None, f"nests deeper than {MAX_DEPTH} levels"
        except (ValueError, UnicodeDecodeError):
            raise MalformedJson("request body is not valid JSON") from None
        else:
            problem = shape_problem(payload, surrogates=may_hold_surrogates(raw))
        if problem:  # kept without the body: it could not be stored or read back safely
            unreadable = ValidationError({"_schema": [f"The body {problem}."]})
            raise self._dead_letter_invalid(raw, None, Described(None, None, None), unreadable) from None
        described = self.source.describe(payload, headers)
        if described.event_type:
            seen["event_type"] = self._type_label(described.event_type)
        try:
            envelope, update = read_event(
                self.source,
                self.mapping,
                self.identity_key,
                payload,
                headers,
                self.trusted,
                max_clock_skew=self.max_clock_skew,
            )
        except ValidationError as exc:
            raise self._dead_letter_invalid(raw, payload, described, exc) from None
        if update is None:
            ignored = self.store.ignore(self.source.name, envelope.event_id)
            return Received(Outcome.IGNORED if ignored else Outcome.DUPLICATE, envelope.event_id)
        if update.hint is None:
            return self._dead_letter_kept(update, unresolved(update), Outcome.UNRESOLVED_IDENTITY)
        try:
            if not self.store.accept(update):
                return Received(Outcome.DUPLICATE, update.event_id)
        except IdentityConflict as exc:
            return self._dead_letter_kept(update, conflict_item(update, exc), Outcome.IDENTITY_CONFLICT)
        log.info(
            "accepted %s %s",
            update.event_type,
            update.event_id,
            extra={
                "source": update.source,
                "event_id": update.event_id,
                "event_type": update.event_type,
                "user_id": update.user_id,
                "outcome": "accepted",
            },
        )
        return Received(Outcome.ACCEPTED, update.event_id)

    def _dead_letter_kept(self, update: UserUpdate, item: DeadLetter, outcome: Outcome) -> Received:
        """Answered 2xx (the same event resent would end the same way) but delivered to no one: kept in
        the dead-letter queue for an operator, counted in the ledger as dead-lettered."""
        if not self.store.reject(item, update.event_id):
            return Received(Outcome.DUPLICATE, update.event_id)
        log.warning(
            "%s %s %s: %s",
            outcome.value.replace("_", " "),
            update.event_type,
            update.event_id,
            item.message,
            extra={
                "source": update.source,
                "event_id": update.event_id,
                "event_type": update.event_type,
                "user_id": update.user_id,
                "outcome": outcome.value,
            },
        )
        return Received(outcome, update.event_id)

    def _dead_letter_invalid(
        self, raw: bytes, payload: Any, described: Described, exc: ValidationError
    ) -> InvalidPayload:
        """Keep the event in the dead-letter queue; the caller refuses it with the field messages."""
        source = self.source.name
        event_id = described.event_id if described.event_id and EVENT_ID.match(described.event_id) else None
        event_type = described.event_type
        key = event_id or hashlib.sha256(raw).hexdigest()[:32]
        self.store.reject(
            invalid_item(
                source,
                key,
                event_id,
                described,
                payload,
                exc,
                "payload does not fit the schema",
                user_id=named_user(payload, self.identity_key),
            ),
            key,
        )
        log.warning(
            "invalid payload %s %s: %s",
            event_type,
            key,
            exc.messages,
            extra={"source": source, "event_id": event_id, "event_type": event_type, "outcome": "invalid_payload"},
        )
        return InvalidPayload(f"payload does not fit the {self.source.title} event schema", details=exc.messages)
