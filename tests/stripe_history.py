"""Stripe customers, subscriptions and event histories built from the shared real payloads, for the
backfill, sync and reconcile tests and bench/sync."""

from __future__ import annotations

import copy
from typing import Any

from tests.conftest import load_fixture, stripe_event

PLANS = ("basic", "pro", "team")
STATUSES = ("trialing", "active", "past_due")
_SUBSCRIPTION = load_fixture("openapi-fixtures3.subscription.json")
_CUSTOMER = load_fixture("openapi-fixtures3.customer.json")


def customer(n: int, *, created: int, email: str | None = None) -> dict[str, Any]:
    obj = copy.deepcopy(_CUSTOMER)
    obj.update(id=f"cus_{n:06d}", created=created, email=email or f"user{n}@example.com", name=f"User {n}")
    obj["metadata"] = {"user_id": f"user-{n}"}
    return obj


def subscription(n: int, *, created: int, plan: str, status: str, item: int = 0) -> dict[str, Any]:
    obj = copy.deepcopy(_SUBSCRIPTION)
    obj.update(id=f"sub_{n:06d}_{item}", customer=f"cus_{n:06d}", created=created, status=status)
    obj["metadata"] = {"user_id": f"user-{n}"}
    obj["items"]["data"][0]["price"]["nickname"] = plan
    return obj


def history(users: int, steps: int, *, start: int) -> list[dict[str, Any]]:
    """Per user: a customer.updated, then `steps` subscription changes; events one second apart,
    users interleaved, oldest first."""
    events, at = [], start
    for step in range(steps + 1):
        for n in range(users):
            at += 1
            if step == 0:
                obj, kind = customer(n, created=start, email=f"user{n}@example.com"), "customer.updated"
            else:
                plan, status = PLANS[(n + step) % len(PLANS)], STATUSES[(n * step) % len(STATUSES)]
                obj = subscription(n, created=start, plan=plan, status=status)
                kind = "customer.subscription.created" if step == 1 else "customer.subscription.updated"
            events.append(stripe_event(kind, obj, event_id=f"evt_{step:03d}_{n:06d}", created=at))
    return events


def final_plans(events: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """user id -> (plan, subscription status) of the newest subscription event."""
    state: dict[str, tuple[int, str, str]] = {}
    for event in events:
        obj = event["data"]["object"]
        if obj["object"] != "subscription":
            continue
        user = obj["metadata"]["user_id"]
        plan = obj["items"]["data"][0]["price"]["nickname"]
        if user not in state or event["created"] >= state[user][0]:
            state[user] = (event["created"], plan, obj["status"])
    return {user: (plan, status) for user, (_, plan, status) in state.items()}
