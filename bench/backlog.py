"""Backlog: with workers stopped (what Redis sees during a User.com outage), 100,000 events for 5,000
users (several rounds of updates per user: plan, status, seats, mrr, tags) -> Redis used_memory growth
per event and per user; then drain with 2 worker processes -> calls made (goal: one per user), time,
and memory left afterwards. Goals: pending <= 1,500 B per user + 120 B per event; retained <= 150 B/event.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

from bench.harness import backend, start, stop, trace_cost, wait_drained
from service.core.update import UserUpdate

PLANS = ["starter", "pro", "team", "enterprise"]
STATUSES = ["trialing", "active", "past_due", "canceled"]


def event(rng: random.Random, n: int, user: str) -> UserUpdate:
    return UserUpdate(
        source="stripe",
        event_id=f"evt_1P{n:08d}{rng.getrandbits(40):010x}",
        event_type=rng.choice(["customer.subscription.updated", "invoice.paid", "customer.updated"]),
        event_time=1_700_000_000 + n,
        user_id=user,
        customer_id=f"cus_{user.removeprefix('user-'):0>14}",
        standard={"email": f"{user}@example.com"} if rng.random() < 0.3 else {},
        custom={
            "plan": rng.choice(PLANS),
            "subscription_status": rng.choice(STATUSES),
            "seats": rng.randint(1, 50),
            "mrr": round(rng.uniform(10, 5000), 2),
        },
        tags=rng.sample(["paying", "trial", "churn-risk", "annual"], rng.randint(0, 2)),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rng = random.Random(5)
    with tempfile.TemporaryDirectory() as tmp, backend(tmp, users=args.users) as b:
        store = b.store()
        before = int(store.redis.info("memory")["used_memory"])
        for n in range(args.events):
            store.accept(event(rng, n, b.users[rng.randrange(args.users)]))
        pending = int(store.redis.info("memory")["used_memory"]) - before
        started = time.time()
        workers = start(["worker", "--concurrency", str(args.workers)], b.env)
        try:
            elapsed = wait_drained(store, timeout=1200)
        finally:
            stop(workers)
        calls = sum(1 for r in b.sandbox.state.requests if r["at"] >= started)
        retained = int(store.redis.info("memory")["used_memory"]) - before
        traces, trace_bytes = trace_cost(store.redis)
        ledger = store.ledger()
    print(f"{args.events} events for {args.users} users, workers stopped:")
    print(
        f"  pending: {pending / args.events:.0f} B per event, {pending / args.users:.0f} B per user "
        f"({pending / 1e6:.1f} MB)   (goal <= 1,500 B/user + 120 B/event = "
        f"{(1500 * args.users + 120 * args.events) / 1e6:.1f} MB)"
    )
    print(
        f"drained by {args.workers} worker processes in {elapsed:.1f}s: {calls} calls for {args.users} users "
        f"(goal: one per user); ledger {ledger}"
    )
    print(f"  retained after delivery: {retained / args.events:.0f} B per event   (goal <= 150)")
    per_user = trace_bytes / traces if traces else 0
    print(
        f"  of which the per-user trace (RELAY_TRACE_PER_USER, default 20): {trace_bytes / 1e6:.2f} MB in "
        f"{traces} lists, {per_user:.0f} B per user   (goal: about 2 KB per user at most)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
