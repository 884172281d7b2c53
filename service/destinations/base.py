"""A destination: where normalized updates are delivered, behind one small interface.

An adapter sends one merged update for one user and classifies the answer: it returns on
success, raises `Retryable` (throttled, 5xx, timeout, network; with Retry-After when given) or
`Rejected` (refused as it is: sending it again will not help). Everything else (ordering,
coalescing, retries, the dead-letter queue) is the same for every destination.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol


class DeliveryError(Exception):
    def __init__(self, message: str, *, status: int | None = None, body: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class Retryable(DeliveryError):
    """Try again later: throttled, server error, timeout or network failure."""

    def __init__(
        self, message: str, *, status: int | None = None, body: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status, body=body)
        self.retry_after = retry_after


class Rejected(DeliveryError):
    """The destination refused the request as it is; sending it again will not help."""


class Destination(Protocol):
    name: str

    def accepts(self, standard: dict[str, Any], custom: dict[str, Any], tags: list[str]) -> bool:
        """Whether the update carries anything this destination stores."""
        ...

    # Whether that memory may be forgotten after a while (an id learned again by the next call), or is
    # what the destination itself keeps for good and must be kept as long (UserKit's whole name).
    memory_expires: bool

    def memory_key(self, user_id: str) -> str | None:
        """The Redis key of what the destination keeps about the user between deliveries (e.g. the
        destination's own id for it), read with the user's lease; None when it keeps nothing."""
        ...

    def send(
        self, user_id: str, standard: dict[str, Any], custom: dict[str, Any], tags: list[str], memory: str | None
    ) -> str | None:
        """Deliver; `memory` is what was kept about the user (None: nothing). Returns what to keep
        from now on, written with the outcome ('' to forget it), or None to leave it as it is."""
        ...


class Limiter(Protocol):
    """The cluster-wide rate limiter a destination's calls go through (workers/ratelimit.py)."""

    def slot(self) -> AbstractContextManager[None]: ...

    def pause(self, seconds: float | None) -> float: ...


@dataclass(frozen=True, kw_only=True)
class DestinationSettings:
    """One destination's settings, read from the variables its DestinationSpec names."""

    api_url: str
    credential: str = field(repr=False)
    rate_limit: float  # calls per second, cluster-wide
    burst: int
    max_in_flight: int
    connect_timeout: float
    read_timeout: float


@dataclass(frozen=True)
class DestinationSpec:
    """Everything the rest of the relay knows of a destination: the registry lists one each."""

    name: str  # its keys, queues and metrics labels; `<name>_rejected` is its dead-letter reason
    title: str
    url_env: str
    url_example: str
    credential_env: str
    rate_env: str
    burst_env: str
    in_flight_env: str
    client: Callable[[DestinationSettings, Limiter | None], Destination]
    url_default: str = ""
    # Timeouts are shared by every destination (USERCOM_*_TIMEOUT_SECONDS, as before UserKit came).
    connect_timeout_env: str = "USERCOM_CONNECT_TIMEOUT_SECONDS"
    read_timeout_env: str = "USERCOM_READ_TIMEOUT_SECONDS"
