"""Coalescing under throttling: 20,000 events for 1,000 users arrive (shuffled, so older events
often arrive after newer ones) while the relay may call User.com only R times a second.

Prints the User.com calls made (goal <= 1,100) and checks the double's final state against
applying every event in event-time order (goal: exactly equal).
"""

from __future__ import annotations

import argparse
import random
import tempfile
from typing import Any

from bench.harness import backend, start, stop, wait_drained
from service.core.update import UserUpdate

TAGS = ["subscriber", "paying", "trial", "churned", "refunded"]


def events(users: list[str], count: int, seed: int) -> list[UserUpdate]:
    rng = random.Random(seed)
    times = rng.sample(range(1_700_000_000, 1_700_000_000 + 10 * count), count)  # distinct event times
    made = []
    for n, event_time in enumerate(times):
        custom = {name: rng.randint(0, 999) for name in rng.sample(["plan", "mrr", "seats", "score_x"], 2)}
        made.append(
            UserUpdate(
                source="stripe",
                event_id=f"evt_{n}",
                event_type="customer.subscription.updated",
                event_time=event_time,
                user_id=rng.choice(users),
                customer_id=None,
                custom=custom,
                tags=[rng.choice(TAGS)],
            )
        )
    rng.shuffle(made)
    return made


def mismatches(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Users whose state in the double differs from applying their events in event-time order."""
    return [
        user
        for user, (attributes, tags) in expected.items()
        if actual[user] is None or actual[user]["attributes"] != attributes or set(actual[user]["tags"]) != tags
    ]


def expected_state(updates: list[UserUpdate]) -> dict[str, tuple[dict[str, object], set[str]]]:
    state: dict[str, tuple[dict[str, object], set[str]]] = {}
    for update in sorted(updates, key=lambda u: u.event_time):
        attributes, tags = state.setdefault(update.user_id or "", ({}, set()))
        attributes.update(update.custom)
        tags.update(update.tags)
    return state


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--rate", type=float, default=20.0, help="relay's User.com limit, calls/s (default 20)")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    limit = {"USERCOM_RATE_LIMIT": str(args.rate), "USERCOM_BURST": "1", "USERCOM_MAX_IN_FLIGHT": str(args.workers)}
    with tempfile.TemporaryDirectory() as tmp, backend(tmp, users=args.users, **limit) as b:
        updates = events(b.users, args.events, seed=7)
        store = b.store()
        workers = start(["worker", "--concurrency", str(args.workers)], b.env)
        try:
            for update in updates:  # arriving while the workers are already throttled
                store.accept(update)
            elapsed = wait_drained(store, timeout=10 * args.users / args.rate + 300)
        finally:
            stop(workers)
        calls = [r for r in b.sandbox.state.requests if r["method"] == "PUT"]
        ledger = store.ledger()
        actual = {u: b.sandbox.state.user_by_custom_id(u) for u in b.users}
    expected = expected_state(updates)
    wrong = mismatches(expected, actual)
    print(
        f"{args.events} events for {args.users} users, shuffled, relay limited to {args.rate:g} calls/s, "
        f"{args.workers} worker processes, drained in {elapsed:.0f}s"
    )
    print(f"User.com calls: {len(calls)}   (goal <= {int(args.users * 1.1)})")
    print(f"ledger: delivered {ledger['delivered']}, coalesced {ledger['coalesced']}, in flight {ledger['in_flight']}")
    print(
        f"final state equal to applying every event in event-time order: {len(expected) - len(wrong)}"
        f"/{len(expected)} users {'(exact)' if not wrong else '(MISMATCH: ' + ', '.join(wrong[:5]) + ')'}"
    )
    return 0 if not wrong else 1


if __name__ == "__main__":
    raise SystemExit(main())
