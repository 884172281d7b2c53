"""Mass updates within a group of users (workers/delivery/group.py): where several held users' whole
update is the same standard attribute value and their User.com ids are known, one
`PUT /users/mass_update_standard_attributes/` per (attribute, value) replaces their own calls, if,
and only if, the plan makes fewer calls (service/destinations/usercom/mass_update.py plans it).

Only a destination that has such a call (`mass_update_standard`) is planned for. Each mass call takes
its own slot of the rate limiter. A mass call that fails in any way (refused, retryable, throttled)
covers no one: its users are sent one by one, as without a plan, which isolates a refused value and
retries what failed. The endpoint answers `{"status": "ok"}` without naming the ids it updated: a
User.com id that has become stale (the user deleted in User.com) is skipped there silently, where a
user's own call would have re-created the user. That is why only ids learned from User.com's own
answers (kept for RELAY_DLQ_TTL_DAYS at most) are used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from service.destinations.base import DeliveryError
from service.destinations.http_api import BEFORE_CALL
from service.destinations.usercom.mass_update import PATH, Pending, plan
from workers.delivery.context import Deferred, DeliveryContext, bound, check_time_left
from workers.ordering import Hold, UserBusy
from workers.ratelimit import Throttled

log = logging.getLogger(__name__)
ENDPOINT = f"PUT {PATH}"


def pending_of(hold: Hold, allowed: set[str] | None = None) -> Pending:
    """The update the user's own call would carry (the claimed attributes only, when `allowed`)."""
    state = hold.state
    memory = hold.memory
    return Pending(
        user_id=hold.user_id,
        usercom_id=int(memory) if memory and memory.isdigit() else None,
        standard={k: v for k, (v, _, _) in state.standard.items() if allowed is None or k in allowed},
        custom={k: v for k, (v, _, _) in state.custom.items() if allowed is None or k in allowed},
        tags=tuple(state.tag_list()),
    )


def worth_planning(ctx: DeliveryContext, holds: list[Hold]) -> bool:
    """Whether a mass update could save calls for these users (before their claims: then their first
    call's slot is not booked ahead, as the mass calls come first)."""
    if len(holds) < 2 or not hasattr(ctx.client, "mass_update_standard"):
        return False
    return bool(plan([pending_of(hold) for hold in holds]).mass)


def send_mass(ctx: DeliveryContext, claimed: list[tuple[Hold, set[str]]], deadline: float) -> set[str]:
    """Send the planned mass updates; the user ids whose whole update went in them. None is sent
    after `deadline` (time.monotonic(): the group's time, group.py), its users go on their own."""
    chosen = plan([pending_of(hold, allowed) for hold, allowed in claimed])
    if not chosen.mass:
        return set()
    by_id = {int(hold.memory): hold for hold, _ in claimed if hold.memory and hold.memory.isdigit()}
    failed: set[int] = set()
    for attribute, value, ids in chosen.mass:
        if time.monotonic() > deadline:
            failed.update(ids)
            continue
        checks = _before_mass_call(ctx, [by_id[usercom_id] for usercom_id in ids])
        try:
            with bound(BEFORE_CALL, checks), ctx.limiter.slot():
                ctx.client.mass_update_standard(attribute, value, ids)  # type: ignore[attr-defined]
        except (DeliveryError, Throttled, UserBusy, Deferred) as exc:
            log.warning("mass update of %s for %d users failed (%s): each is sent on its own", attribute, len(ids), exc)
            failed.update(ids)
    in_mass = {usercom_id for _, _, ids in chosen.mass for usercom_id in ids}
    return {by_id[usercom_id].user_id for usercom_id in in_mass - failed}


def _before_mass_call(ctx: DeliveryContext, holds: list[Hold]) -> Callable[[], None]:
    """A mass call's check (BEFORE_CALL): every user's lease surely runs, and the job has time for it."""

    def check() -> None:
        for hold in holds:
            hold.check_lease()
        check_time_left(ctx)

    return check
