"""Backlog: with workers stopped (what Redis sees during a User.com outage), 100,000 events for 5,000
users (several rounds of updates per user: plan, status, seats, mrr, tags) -> Redis used_memory growth
per event and per user; then drain with 2 worker processes -> calls made (goal: one per user), time,
and memory left afterwards. Goals: pending <= 1,500 B per user + 120 B per event; retained <= 150 B/event.
"""

from __future__ import annotations

import argparse
import random
import re
import tempfile
import time
from typing import Any

from redis import Redis

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


def breakdown(redis: Redis) -> list[tuple[str, int, int, str]]:
    """MEMORY USAGE (all samples) of every key, summed by kind (its key's first parts, numbers blanked),
    with the encodings seen: where pending memory goes."""
    names = [key.decode() for key in redis.scan_iter(count=1000)]
    pipe = redis.pipeline(transaction=False)
    for key in names:
        pipe.memory_usage(key, samples=0)
        pipe.object("encoding", key)
    answers = pipe.execute()
    kinds: dict[str, list[Any]] = {}
    for i, key in enumerate(names):
        parts = key.split(":")
        kind = ":".join(parts[:3] if parts[1] in ("dedup", "pending", "customers", "queue") else parts[:2])
        kind = re.sub(r"\d+", "#", kind)
        entry = kinds.setdefault(kind, [0, 0, set()])
        entry[0] += 1
        entry[1] += answers[2 * i] or 0
        entry[2].add(answers[2 * i + 1].decode() if isinstance(answers[2 * i + 1], bytes) else str(answers[2 * i + 1]))
    rows = [(kind, n, size, ",".join(sorted(enc))) for kind, (n, size, enc) in kinds.items()]
    return sorted(rows, key=lambda row: -row[2])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--breakdown", action="store_true", help="MEMORY USAGE of every key, by kind, while pending")
    args = parser.parse_args()
    rng = random.Random(5)
    with tempfile.TemporaryDirectory() as tmp, backend(tmp, users=args.users) as b:
        store = b.store()
        before = int(store.redis.info("memory")["used_memory"])
        for n in range(args.events):
            store.accept(event(rng, n, b.users[rng.randrange(args.users)]))
        pending = int(store.redis.info("memory")["used_memory"]) - before
        parts = breakdown(store.redis) if args.breakdown else []
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
    for kind, count, size, encodings in parts:
        print(
            f"    {kind:<34} {count:>7} keys {size / 1e6:6.2f} MB  {size / args.events:6.1f} B/event "
            f"{size / args.users:7.1f} B/user  {encodings}"
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
