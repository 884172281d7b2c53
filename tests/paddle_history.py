"""Paddle Billing event histories built from the shared real payload (pay.subscription.created.json),
for the Paddle backfill and reconcile tests. The user is the Paddle customer id (custom_data is
not trusted by default)."""

from __future__ import annotations

import copy
import time
from typing import Any

from tests.conftest import load_fixture

PLANS = ("basic", "pro", "team")
STATUSES = ("trialing", "active", "past_due")
_EVENT = load_fixture("pay.subscription.created.json", "paddle_billing")


def iso(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(seconds))


def customer_id(n: int) -> str:
    return f"ctm_{n:06d}"


def paddle_event(kind: str, data: dict[str, Any], *, at: int, n: int) -> dict[str, Any]:
    """The notification envelope; ids sort by time, as Paddle's (ULIDs) do."""
    return {
        "event_id": f"evt_{at:012d}_{n:06d}",
        "event_type": kind,
        "occurred_at": iso(at),
        "notification_id": f"ntf_{at:012d}_{n:06d}",
        "data": data,
    }


def customer(n: int) -> dict[str, Any]:
    return {
        "id": customer_id(n),
        "name": f"User {n}",
        "email": f"user{n}@example.com",
        "status": "active",
        "custom_data": None,
        "locale": "en",
    }


def subscription(n: int, *, plan: str, status: str) -> dict[str, Any]:
    data = copy.deepcopy(_EVENT["data"])
    data.update(id=f"sub_{n:06d}", customer_id=customer_id(n), status=status)
    data["items"][0]["price"]["name"] = plan
    return data


def history(users: int, steps: int, *, start: int) -> list[dict[str, Any]]:
    """Per user: a customer.updated, then `steps` subscription changes; one second apart, users
    interleaved, oldest first."""
    events, at = [], start
    for step in range(steps + 1):
        for n in range(users):
            at += 1
            if step == 0:
                events.append(paddle_event("customer.updated", customer(n), at=at, n=n))
                continue
            plan, status = PLANS[(n + step) % len(PLANS)], STATUSES[(n * step) % len(STATUSES)]
            kind = "subscription.created" if step == 1 else "subscription.updated"
            events.append(paddle_event(kind, subscription(n, plan=plan, status=status), at=at, n=n))
    return events


def final_plans(events: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """customer id -> (plan, subscription status) of the newest subscription event."""
    state: dict[str, tuple[str, str, str]] = {}
    for event in events:
        if not event["event_type"].startswith("subscription."):
            continue
        data = event["data"]
        if data["customer_id"] not in state or event["occurred_at"] >= state[data["customer_id"]][0]:
            state[data["customer_id"]] = (event["occurred_at"], data["items"][0]["price"]["name"], data["status"])
    return {user: (plan, status) for user, (_, plan, status) in state.items()}
