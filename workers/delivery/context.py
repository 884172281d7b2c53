"""What a worker process builds once and every delivery job uses."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

from redis import Redis
from rq import Queue

from service.config import Settings
from service.destinations.base import Destination
from service.store.ledger import Store
from workers.ordering import Ordering
from workers.ratelimit import RateLimiter

# The id of a job taken by a running job (workers/delivery/batch.py) while it is handled.
job_in_hand: ContextVar[str | None] = ContextVar("job_in_hand", default=None)


@dataclass
class DeliveryContext:
    """What a worker process builds once and every job uses."""

    settings: Settings
    redis: Redis
    store: Store  # bound to the destination's keys
    client: Destination
    limiter: RateLimiter  # the destination's, also used by its client
    queues: dict[str, Queue]  # the destination's, by lane
    ordering: Ordering
    clock: Callable[[], float] = time.time
    jitter: Callable[[], float] = field(default=random.random)


_context: DeliveryContext | None = None


def configure(context: DeliveryContext) -> None:
    global _context
    _context = context


def current() -> DeliveryContext:
    if _context is None:
        raise RuntimeError("delivery context not configured: start workers with `relay worker`")
    return _context
