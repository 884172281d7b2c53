"""Values a destination left out of a delivered update (service/destinations/dropped.py): each one
is counted (relay_values_dropped_total{attribute,reason}) and logged at WARNING with the event that
carried it, and the list is returned for the user's trace."""

from __future__ import annotations

import logging

from service.core.update import UserUpdate
from service.destinations.dropped import DroppedValue
from service.ops.metrics import VALUES_DROPPED
from workers.delivery.outcomes import fields

log = logging.getLogger("relay.delivery.dropped")


def report_dropped(
    left_out: list[DroppedValue], update: UserUpdate, others: list[UserUpdate], user_id: str, lane: str, attempt: int
) -> list[dict[str, str]]:
    """What the user's calls left out: [{event_id, attribute, reason}], counted and logged."""
    reported: list[dict[str, str]] = []
    for value in left_out:
        VALUES_DROPPED.labels(value.attribute, value.reason).inc()
        carriers = [u for u in (update, *others) if value.attribute in u.standard or value.attribute in u.custom]
        for carrier in carriers or [update]:
            log.warning(
                "left %s out of %s %s for user %s: %s (the rest of the update was delivered)",
                value.attribute,
                carrier.event_type,
                carrier.event_id,
                user_id,
                value.reason,
                extra={**fields(carrier, user_id, lane, attempt, "delivered"), "reason": value.reason},
            )
            reported.append({"event_id": carrier.event_id, **value.as_dict()})
    return reported
