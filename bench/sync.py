"""Initial sync under User.com's rate limit: `relay sync stripe` over N customers with subscriptions
from the Stripe API double, User.com (the sandbox) limited to --rate calls/s, `relay web` and
`relay worker` running, and live webhooks posted at a steady rate all along.

Prints: User.com calls per synced user (goal <= 1.0 plus creations), wall time from the sync's
start until everything is delivered against the rate-limit floor (users / rate), Redis memory
(peak during the run), and live webhooks' 202 -> User.com p99 before and during the sync (goal:
within 2x). The default is the issue's 20,000 customers (at 10/s: over half an hour); --customers
makes a shorter run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Any

from redis import Redis

from bench.harness import RELAY, Webhook, backend, post_paced, start, stop, wait_drained
from bench.latency import wait_http
from service.devtools.embedded_redis import free_port
from service.devtools.stripe_api import StripeApiServer
from tests.stripe_history import PLANS, STATUSES, customer, subscription

SECRET = "whsec_sync_bench_0123456789"
API_KEY = "rk_test_sync_bench_readonly"


def post_round(port: int, users: list[str], rate: float, prefix: str) -> list[tuple[str, float]]:
    """Signed customer.updated webhooks at `rate`/s for up to 10 s, each live user at most once (so
    that each has a User.com call of its own), each with an email of its own: (email, when its 202
    came back)."""
    hooks = [
        Webhook(users[n], f"evt_{prefix}_{n}", f"cus_live_{n}", f"{prefix}{n}@example.com")
        for n in range(min(len(users), max(1, int(rate * 10))))
    ]
    time.sleep(1 / rate)  # paced from the previous round's last webhook too
    accepted = post_paced(port, SECRET, hooks, rate)
    return [(hook.email, accepted[hook.user]) for hook in hooks if hook.user in accepted]


def latencies(accepted: list[tuple[str, float]], requests: list[dict[str, Any]]) -> str:
    """(email, when its 202 came back) -> the User.com call that carried that email (the first, if
    more did), as p50 / p99 / max and the sample's size."""
    carried: dict[str, float] = {}
    for r in requests:
        email = r["body"].get("email") if isinstance(r.get("body"), dict) else None
        if email is not None:
            carried.setdefault(email, r["at"])
    waits = [max(0.0, carried[email] - at) * 1000 for email, at in accepted if email in carried]
    if len(waits) < 2:
        return f"too few samples ({len(waits)})"
    cuts = statistics.quantiles(waits, n=100)
    return f"p50 {cuts[49]:.0f} / p99 {cuts[98]:.0f} / max {max(waits):.0f} ms ({len(waits)} webhooks)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=20_000, help="customers, each with a subscription")
    parser.add_argument("--rate", type=float, default=10.0, help="User.com calls/s (default 10)")
    parser.add_argument("--burst", type=int, default=1, help="USERCOM_BURST (default 1, the relay's default)")
    parser.add_argument("--live-rate", type=float, default=1.0, help="live webhooks/s during the run (default 1)")
    parser.add_argument("--baseline-seconds", type=float, default=60.0, help="live webhooks alone first (default 60)")
    args = parser.parse_args()
    live_users = [f"live-{n}" for n in range(50)]
    port = free_port()
    api = StripeApiServer(API_KEY).start()
    for n in range(args.customers):
        api.state.customers.append(customer(n, created=1_700_000_000 + n))
        plan, status = PLANS[n % 3], STATUSES[n % 3]
        api.state.subscriptions.append(subscription(n, created=1_700_000_000 + n, plan=plan, status=status))
    limits = {"USERCOM_RATE_LIMIT": str(args.rate), "USERCOM_BURST": str(args.burst), "USERCOM_MAX_IN_FLIGHT": "10"}
    extra = {"STRIPE_WEBHOOK_SECRETS": SECRET, "STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": api.base_url, **limits}
    with tempfile.TemporaryDirectory() as tmp, backend(tmp, users=args.customers, rate_limit=args.rate, **extra) as b:
        b.sandbox.state.seed(live_users)
        children = [
            start(["web", "--bind", f"127.0.0.1:{port}"], b.env),
            start(["worker", "--concurrency", "2"], b.env),
        ]
        redis = Redis.from_url(b.redis_server.url)
        peak, sampling, delivered_at = [0], threading.Event(), [0.0]

        def sample(sync: subprocess.Popen[str]) -> None:
            """Redis' peak memory; when the sync has ended and everything is delivered."""
            while not sampling.is_set():
                peak[0] = max(peak[0], int(redis.info("memory")["used_memory"]))
                if not delivered_at[0] and sync.poll() is not None and b.store().ledger()["in_flight"] == 0:
                    delivered_at[0] = time.time()  # the clock of the 202s and of the double's calls
                time.sleep(0.2)

        try:
            wait_http(f"http://127.0.0.1:{port}/readyz")
            time.sleep(2)
            before: list[tuple[str, float]] = []
            began = time.monotonic()
            for rounds in itertools.count():
                if time.monotonic() - began >= args.baseline_seconds:
                    break
                before += post_round(port, live_users, args.live_rate, f"base{rounds}")
            wait_drained(b.store(), timeout=120)
            ids = {u: b.sandbox.state.user_by_custom_id(u)["id"] for u in live_users}  # type: ignore[index]
            baseline = latencies(before, b.sandbox.state.requests)
            calls_before = len(b.sandbox.state.requests)
            began = time.time()
            sync = subprocess.Popen([*RELAY, "sync", "stripe", "--json"], env=b.env, stdout=subprocess.PIPE, text=True)
            sampler = threading.Thread(target=sample, args=(sync,), daemon=True)
            sampler.start()
            during: list[tuple[str, float]] = []
            for rounds in itertools.count():
                if delivered_at[0] or not sampler.is_alive():
                    break
                during += post_round(port, live_users, args.live_rate, f"during{rounds}")
            if not delivered_at[0]:
                raise RuntimeError("the sampler stopped before the sync was delivered")
            wall = delivered_at[0] - began
            sampling.set()
            summary = json.loads((sync.stdout.read() if sync.stdout else "").strip().splitlines()[-1])
        finally:
            stop(*children)
            api.stop()
        requests = b.sandbox.state.requests[calls_before:]
        live_paths = {f"/api/public/users/{usercom_id}/" for usercom_id in ids.values()}  # by User.com id, once learned
        synced = [
            r
            for r in requests
            if "/live-" not in r["path"] and r["path"] not in live_paths and r["method"] in ("PUT", "POST")
        ]
        creations = sum(1 for r in synced if r["path"].endswith("/update_or_create/"))
        # webhooks answered after the sync's last delivery are not "during" it
        during_sync = latencies([(email, at) for email, at in during if at < delivered_at[0]], requests)
    users = args.customers
    print(f"sync: {users} customers + {users} subscriptions read ({summary['api_calls']} Stripe calls), "
          f"{summary['accepted']} updates queued; User.com limited to {args.rate:g}/s")  # fmt: skip
    print(f"User.com calls per synced user: {len(synced) / users:.3f} (creations {creations}; goal <= 1.0 + creations)")
    refused = Counter(r.get("status") for r in synced if r.get("status", 200) >= 300)
    per_user = Counter(r["path"] for r in synced if r.get("status", 200) < 300)
    print(f"  of which answered >= 300: {dict(refused) or 0}; users updated more than once: "
          f"{sum(1 for n in per_user.values() if n > 1)}")  # fmt: skip
    print(f"wall time to delivered: {wall:.1f} s vs the rate-limit floor {users / args.rate:.1f} s (users / rate)")
    print(f"Redis used_memory peak during the run: {peak[0] / 1e6:.1f} MB")
    print(f"live webhooks 202 -> User.com, alone: {baseline}")
    print(f"                      during the sync: {during_sync} (goal: p99 within 2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
