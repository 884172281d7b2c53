"""Several users' deliveries at once: the jobs a batch thread took together (workers/delivery/batch.py).

Each user's delivery is the one of workers/delivery/job.py (deliver_user), cut into its steps so
that the users' Redis calls share round trips: their leases and states taken in one, their
last-writer-wins claims and call slots in one, each user's calls to the destination, then their
outcomes counted in one. Every guarantee is per user as before: a user another job holds, or one
come twice, is delivered on its own afterwards (waiting for its lease); a user throttled, refused,
failing or busy ends as it would alone (put back, dead-lettered, retried); what a user took stays in
hand until its outcome is counted, so a worker killed midway loses nothing (the jobs stay in the
batch's list and the taking job's re-run delivers them, one by one).

Where several users' whole update is the same standard value, one mass update replaces their calls
(workers/delivery/mass.py), between the claims and the users' own calls.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from service.destinations.base import Retryable
from service.store import keys
from service.store.ledger_state import source_and_hint
from service.store.ledger_user import SettleUser
from workers.delivery.context import Deferred, DeliveryContext, bound, job_in_hand
from workers.delivery.mass import ENDPOINT as MASS_ENDPOINT
from workers.delivery.mass import send_mass, worth_planning
from workers.delivery.outcomes import put_back, retry_or_give_up
from workers.delivery.send import Sent, prepare, report, send_allowed
from workers.ordering import Hold, UserBusy
from workers.ratelimit import Throttled
from workers.scripts_at_once import ScriptCall

USER_BUSY_WAIT_SECONDS = 1.0
# A call (a user's own, or a mass update) not started this long after the group's claims is not made:
# its users are put back (outcome `deferred`). Against an API that lets every call time out (3 + 10 s
# by default), a group of 16 would otherwise hold its carrier job past rq's 60 s timeout. Taking stops
# after 5 s (batch.py), the call under way ends within its timeouts: the job ends within its own.
GROUP_SEND_SECONDS = 30.0


@dataclass
class _Job:
    job_id: str
    source: str
    hint: str
    attempt: int
    first_failure_at: float | None
    lane: str
    hold: Hold | None = None
    outcome: str | None = None


def deliver_group(ctx: DeliveryContext, jobs: list[tuple[str, list[Any], bytes]]) -> list[str]:
    """Each job's outcome, in order. `jobs`: (job id, the job's rq arguments, its user's hint field)."""
    from workers.delivery.job import deliver_user, resolve_user  # job.py hands its batches to this module

    group = [_job(job_id, args, hint) for job_id, args, hint in jobs]
    users = [(j.source, j.hint, resolve_user(ctx.redis, j.source, j.hint)) for j in group]
    holds = ctx.ordering.take_many([(s, h, u, ctx.client.memory_key(u)) for s, h, u in users])
    try:
        for job, hold in zip(group, holds, strict=True):
            job.hold = hold
        _deliver_held(ctx, [j for j in group if j.hold is not None])
    finally:
        ctx.ordering.let_go(holds)
    for job in group:
        if job.hold is None:  # busy, or the same user twice: alone, waiting for its lease
            with _in_hand(job.job_id):
                job.outcome = deliver_user(ctx, job.source, job.hint, job.attempt, job.first_failure_at, job.lane)
    return [str(job.outcome) for job in group]


def _deliver_held(ctx: DeliveryContext, group: list[_Job]) -> None:
    """The held users' deliveries, step by step; each job's outcome set."""
    ready: list[tuple[_Job, Hold]] = []
    for job, hold in _holds(group):
        with _in_hand(job.job_id):
            if not hold.state.events:
                hold.settle(ctx.store, [])  # another job sent it all already
                job.outcome = "settled"
            else:
                job.outcome = prepare(ctx, hold, job.lane)  # None: something to send
        if job.outcome is None:
            ready.append((job, hold))
    # The first user's call slot is booked with the claims (unless mass updates come first: mass.py),
    # and with it, while due now, the next users' (a run, workers/ratelimit.py: their calls then need
    # no round trip each, and what they leave is given back); a call without a slot books its own,
    # which releases the slot of the call before (a thread holds one at a time, as the concurrency
    # cap counts calls), and the count releases the last.
    mass = worth_planning(ctx, [hold for _, hold in ready])
    bookings: list[ScriptCall | None] = [
        ctx.limiter.booking(further=len(ready) - 1) if n == 0 and not mass else None for n in range(len(ready))
    ]
    try:
        claims = ctx.ordering.claim_many([(hold, booking) for (_, hold), booking in zip(ready, bookings, strict=True)])
    except RedisError:
        if bookings and bookings[0] is not None:
            ctx.limiter.unanswered(bookings[0])
        raise
    claimed = [(hold, allowed) for (_, hold), (allowed, _) in zip(ready, claims, strict=True) if allowed is not None]
    deadline = time.monotonic() + GROUP_SEND_SECONDS
    covered = send_mass(ctx, claimed, deadline) if mass else set()
    try:
        to_count = _send_each(ctx, ready, bookings, claims, covered, deadline)
    finally:
        ctx.limiter.end_run()
    done = ctx.limiter.unreleased()
    if not to_count:
        ctx.limiter.release(done)
        return
    to_count[-1][3].slots.extend(done)
    try:
        counted = ctx.ordering.settle_many(ctx.store, [(hold, settle) for _, hold, _, settle in to_count])
    except RedisError:  # the calls' slots were to go with the count: they go with the next booking
        ctx.limiter.orphaned([slot for *_, settle in to_count for slot in settle.slots])
        raise
    for (job, hold, sent, _), settled in zip(to_count, counted, strict=True):
        with _in_hand(job.job_id):
            job.outcome = report(ctx, hold, sent, settled or [], job.attempt, job.lane)


def _send_each(
    ctx: DeliveryContext,
    ready: list[tuple[_Job, Hold]],
    bookings: list[ScriptCall | None],
    claims: list[tuple[set[str] | None, Any]],
    covered: set[str],
    deadline: float,
) -> list[tuple[_Job, Hold, Sent, SettleUser]]:
    """Each claimed user's calls, in turn: what to count, the outcome of the others set. A user whose
    call would start after `deadline` is put back, unless a mass call applied its update already or
    its slot was booked with the claims (the first user's, when no mass call came first)."""
    to_count: list[tuple[_Job, Hold, Sent, SettleUser]] = []
    for (job, hold), booking, (allowed, booked) in zip(ready, bookings, claims, strict=True):
        with _in_hand(job.job_id):
            if booking is None and hold.user_id not in covered and time.monotonic() > deadline:
                job.outcome = _put_back(ctx, job, 0.0, "deferred")
                continue
            try:
                with ctx.limiter.released_later() as slots:
                    if booking is not None:
                        ctx.limiter.booked(booking, booked)
                    applied_by = MASS_ENDPOINT if hold.user_id in covered else None
                    sent = send_allowed(ctx, hold, allowed, job.attempt, job.lane, applied_by)
                    if isinstance(sent, str):
                        job.outcome = sent
                        continue
                    to_count.append((job, hold, sent, hold.settlement(sent.outcomes, sent.memory, None, sent.trace)))
                    ctx.limiter.release_with_next(slots)
            except Throttled as exc:
                job.outcome = _put_back(ctx, job, exc.wait, "throttled")
            except Retryable as exc:
                if exc.status == 429:
                    ctx.redis.set(ctx.store.keys.last_429, ctx.clock())
                job.outcome = retry_or_give_up(ctx, hold, exc, job.attempt, job.first_failure_at, job.lane)
            except UserBusy:
                job.outcome = _put_back(ctx, job, USER_BUSY_WAIT_SECONDS, "user_busy")
            except Deferred:
                job.outcome = _put_back(ctx, job, 0.0, "deferred")
    return to_count


def _holds(group: list[_Job]) -> Iterator[tuple[_Job, Hold]]:
    for job in group:
        if job.hold is not None:
            yield job, job.hold


def _put_back(ctx: DeliveryContext, job: _Job, wait: float, why: str) -> str:
    return put_back(ctx, job.source, job.hint, wait, job.attempt, job.first_failure_at, job.lane, why)


def _job(job_id: str, args: list[Any], hint: bytes) -> _Job:
    user = source_and_hint(hint)
    if user is None:  # the batch hands over only jobs whose user it read: a bug if not
        raise ValueError(f"job {job_id}: its user's reference cannot be read")
    attempt = args[1] if len(args) > 1 else 1
    first_failure_at = args[2] if len(args) > 2 else None
    lane = args[3] if len(args) > 3 else keys.LIVE
    return _Job(job_id, user[0], user[1], attempt, first_failure_at, lane)


def _in_hand(job_id: str) -> AbstractContextManager[None]:
    """While one job of the group is handled: its id names its retry and put-back jobs."""
    return bound(job_in_hand, job_id)
