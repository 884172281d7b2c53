"""What a worker process builds once and every delivery job uses."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

from redis import Redis
from rq import Queue

from service.config import Settings
from service.destinations.base import Destination
from service.store.ledger import Store
from workers.ordering import Ordering
from workers.ratelimit import RateLimiter

T = TypeVar("T")
# The id of a job taken by a running job (workers/delivery/batch.py) while it is handled.
job_in_hand: ContextVar[str | None] = ContextVar("job_in_hand", default=None)
# When the running job must be done with its calls (time.monotonic()), in each thread delivering for it;
# None outside a job.
job_deadline: ContextVar[float | None] = ContextVar("job_deadline", default=None)


class Deferred(Exception):
    """A call that could outlast its job is not made: its user is put back (outcome `deferred`)."""


@contextmanager
def bound(var: ContextVar[T], value: T) -> Iterator[None]:
    """`var` is `value` in this thread for the block, and what it was after."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def calls_until(deadline: float) -> AbstractContextManager[None]:
    """This thread's calls for the job end by `deadline` (time.monotonic())."""
    return bound(job_deadline, deadline)


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


def check_time_left(ctx: DeliveryContext) -> None:
    """Raise Deferred unless a call of the destination, to its timeouts, ends before the job's deadline."""
    deadline = job_deadline.get()
    if deadline is None:
        return
    destination = ctx.settings.destination(ctx.client.name)
    if time.monotonic() + destination.connect_timeout + destination.read_timeout > deadline:
        raise Deferred(f"a {ctx.client.name} call could outlast its delivery job: put back")
