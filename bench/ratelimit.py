"""Rate limit under backlog: R requests/s, 4 worker processes, a backlog of updates, and a
User.com double that answers 429 whenever more than R calls arrive in any sliding 1 s window.

Prints the 429s seen, the busiest 1 s window and the sustained rate, beside the goals (zero
429s, peak <= R, throughput >= 0.95 R). The relay's limit is set a little under R (--headroom):
arrival times at the server jitter around the limiter's exact schedule.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from redis import Redis

from service.config import Settings
from service.embedded_redis import RedisProcess, free_port
from service.store import Store
from service.updates import UserUpdate
from service.usercom_sandbox import SandboxServer

API_KEY = "b" * 64


def peak_window(times: list[float], width: float = 1.0) -> int:
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=20.0, help="R: the double's limit, calls/s (default 20)")
    parser.add_argument("--updates", type=int, default=2000, help="backlog size (default 2000)")
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--headroom", type=float, default=0.97, help="relay limit = headroom x R (default 0.97)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        redis_server = RedisProcess(Path(tmp) / "redis").start()
        sandbox = SandboxServer(api_key=API_KEY, rate_limit=args.rate).start()
        users = [f"user-{n}" for n in range(args.updates)]
        sandbox.state.seed(users)  # existing users: one PUT per update
        env = {
            **os.environ,
            "REDIS_URL": redis_server.url,
            "USERCOM_API_URL": sandbox.base_url,
            "USERCOM_API_KEY": API_KEY,
            "USERCOM_RATE_LIMIT": str(args.rate * args.headroom),
            "USERCOM_BURST": "1",
            "USERCOM_MAX_IN_FLIGHT": str(args.workers),
            "RELAY_LOG_LEVEL": "WARNING",
            "RELAY_METRICS_PORT": str(free_port()),
            "PROMETHEUS_MULTIPROC_DIR": str(Path(tmp) / "metrics"),
        }
        settings = Settings.from_env(env, role="worker")
        store = Store.from_settings(Redis.from_url(redis_server.url), settings)
        for n, user in enumerate(users):
            store.accept(
                UserUpdate(
                    source="stripe",
                    event_id=f"evt_{n}",
                    event_type="customer.updated",
                    event_time=n,
                    user_id=user,
                    customer_id=None,
                    custom={"plan": "pro"},
                )
            )
        workers = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker", "--concurrency", str(args.workers)],
            env=env,
            start_new_session=True,
        )
        started = time.monotonic()
        try:
            while store.ledger()["in_flight"] > 0:
                if time.monotonic() - started > 4 * args.updates / args.rate + 60:
                    print("gave up waiting for the backlog to drain", file=sys.stderr)
                    return 1
                time.sleep(0.5)
        finally:
            os.killpg(workers.pid, signal.SIGTERM)
            workers.wait(timeout=60)
            sandbox.stop()
            redis_server.stop()
    calls = sorted(r["at"] for r in sandbox.state.requests)
    throttled = sum(1 for r in sandbox.state.requests if r.get("status") == 429)
    ok = len(calls) - throttled
    span = calls[-1] - calls[0]
    print(
        f"R = {args.rate:g}/s, relay limit {args.rate * args.headroom:g}/s, {args.workers} worker processes, "
        f"{args.updates} queued updates, double enforcing R over every sliding 1 s window"
    )
    print(f"calls {len(calls)}, 429s {throttled}   (goal 0)")
    print(f"peak 1 s window {peak_window(calls)}   (goal <= {args.rate:g})")
    gaps = sorted(b - a for a, b in itertools.pairwise(calls))
    print(
        f"gaps between arrivals: min {gaps[0] * 1000:.1f} ms, p5 {gaps[len(gaps) // 20] * 1000:.1f} ms, "
        f"median {gaps[len(gaps) // 2] * 1000:.1f} ms (limiter spacing {1000 / (args.rate * args.headroom):.1f} ms)"
    )
    print(f"sustained {ok / span:.2f}/s = {ok / span / args.rate:.3f} R over {span:.1f}s   (goal >= 0.95 R)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
