"""Values a destination would refuse, left out of an update instead of failing all of it.

A destination's client screens each update against the destination's documented rules; what
fails is not sent, and the rest of the update goes out. What was left out of the last send is
the client's `last_dropped` (a DroppedValue each); the delivery job counts it
(relay_values_dropped_total{attribute,reason}) and logs it at WARNING with the event id
(workers/delivery/dropped.py), so that no value is ever lost without a trace.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DroppedValue:
    attribute: str
    reason: str  # invalid_email, invalid_choice, not_a_string... (README: relay_values_dropped_total)

    def as_dict(self) -> dict[str, str]:
        return {"attribute": self.attribute, "reason": self.reason}
