"""Delivery latency with no backlog: signed webhooks at a steady 100/s into `relay web`, and the
time from each 202 to the User.com double receiving that user's update (unthrottled double).

Prints p50/p90/p99/max beside the goal (p99 <= 25 ms).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import urllib3

from bench.harness import Webhook, backend, post_paced, start, stop, wait_drained
from service.devtools.embedded_redis import free_port

SECRET = "whsec_latency_bench_0123456789"


def wait_http(url: str, timeout: float = 30) -> None:
    http = urllib3.PoolManager(retries=False, timeout=1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http.request("GET", url).status == 200:
                return
        except urllib3.exceptions.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=100.0, help="webhooks per second (default 100)")
    parser.add_argument("--events", type=int, default=2000, help="how many (default 2000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    args = parser.parse_args()
    port = free_port()
    accepted_at: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, backend(tmp, users=args.events, STRIPE_WEBHOOK_SECRETS=SECRET) as b:
        children = [
            start(["web", "--bind", f"127.0.0.1:{port}"], b.env),
            start(["worker", "--concurrency", str(args.workers)], b.env),
        ]
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz")
            time.sleep(2)  # workers registered and idle
            hooks = [Webhook(u, f"evt_lat_{n}", f"cus_{n}", f"{u}@example.com") for n, u in enumerate(b.users)]
            accepted_at.update(post_paced(port, SECRET, hooks, args.rate))
            wait_drained(b.store(), timeout=60)
        finally:
            stop(*children)
        received = {r["path"].split("/")[-2]: r["at"] for r in b.sandbox.state.requests if r["method"] == "PUT"}
    latencies = sorted((received[u] - t) * 1000 for u, t in accepted_at.items() if u in received)
    q = statistics.quantiles(latencies, n=100)
    print(
        f"{len(accepted_at)} webhooks accepted at {args.rate:g}/s, {len(latencies)} delivered, "
        f"{args.workers} worker processes, unthrottled User.com double"
    )
    print(
        f"202 -> User.com received: p50 {q[49]:.1f} ms, p90 {q[89]:.1f} ms, p99 {q[98]:.1f} ms, "
        f"max {latencies[-1]:.1f} ms   (goal p99 <= 25 ms)"
    )
    return 0 if len(latencies) == len(accepted_at) else 1


if __name__ == "__main__":
    raise SystemExit(main())
