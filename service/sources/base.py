"""What every webhook source is, and the values it hands to intake. Pure: no I/O.

A source checks its provider's signature, validates the provider's envelope (id, type, time and
the object the event is about) and tells what it can of an event that did not validate. What an
event sets is the mapping's business (service.mapping), except for sources whose events say it
themselves (`Envelope.direct`, Standard Webhooks).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from collections.abc import Mapping as Headers
from dataclasses import dataclass, field
from typing import Any, Protocol

from marshmallow import Schema, ValidationError, validate

from service.core.update import UserUpdate
from service.sources.extraction import Claim, Extractor


class WholeMatch(validate.Regexp):
    """validate.Regexp matched against the whole value: its `re.match` lets a `$` match before a final
    newline (`evt_1\n` was an event id of its own). The pattern stays as written for the OpenAPI document."""

    def __call__(self, value: Any) -> Any:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


@dataclass(frozen=True)
class SourceSettings:
    """One source's settings, read from the variables its SourceSpec names."""

    secrets: tuple[str, ...] = field(repr=False)
    tolerance_seconds: int
    identity_key: str = "user_id"


@dataclass(frozen=True)
class Envelope:
    event_id: str
    event_type: str
    event_time: int  # epoch seconds
    obj: Any  # what the event is about, validated by the mapped extractor's schema
    path: tuple[str, ...]  # where obj sits in the payload, for error messages
    user_id: str | None = None  # identity carried by the envelope rather than the object
    claim: Claim | None = None  # a user id the envelope carries from a buyer-settable field
    direct: bool = False  # the event says what to set itself (no mapping applies): `update`
    update: UserUpdate | None = None


@dataclass(frozen=True)
class Described:
    """What can be told of an event that did not validate, to file it in the dead-letter queue."""

    event_id: str | None
    event_type: str | None
    event_time: int | None


class Source(Protocol):
    name: str
    title: str

    def verify(self, raw: bytes, headers: Headers[str, str]) -> None:
        """Raise a SignatureError unless a configured secret signed this request."""
        ...

    def envelope(self, payload: Any, headers: Headers[str, str]) -> Envelope:
        """Raise marshmallow's ValidationError, with field messages, when the envelope does not fit."""
        ...

    def describe(self, payload: Any, headers: Headers[str, str]) -> Described: ...


@dataclass(frozen=True)
class SourceSpec:
    """Everything the rest of the relay knows of a source: the registry lists one per provider."""

    name: str  # the route is /webhooks/<name>
    title: str
    secret_env: str  # comma-separated secrets; the source is on when it is set
    build: Callable[[SourceSettings], Source]
    sign: Callable[[bytes, str, int], dict[str, str]]  # (body, secret, unix time) -> the signature headers
    event_schema: type[Schema]  # for the OpenAPI document
    signature_headers: tuple[tuple[str, str], ...]  # (header, what it holds), for the OpenAPI document
    extractors: dict[str, Extractor] = field(default_factory=dict)  # what the mapping file may name
    tolerance_env: str | None = None
    default_tolerance: int = 0
    secret_problem: Callable[[str], str | None] | None = None  # why a secret is unusable, if it is
    # The event types the provider documents (None: unknown), to tell a mapping's typo (check-config, relay web)
    documented_types: Callable[[], frozenset[str] | None] = lambda: None


def text_or_none(value: Any, limit: int = 255) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= limit else None


def iso_seconds(value: Any) -> int | None:
    try:
        return int(dt.datetime.fromisoformat(value).timestamp()) if isinstance(value, str) else None
    except ValueError:
        return None
