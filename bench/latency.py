"""Delivery latency with no backlog: signed webhooks at a steady 100/s into `relay web`, and the
time from each 202 to the User.com double receiving that user's update (unthrottled double).

Prints p50/p90/p99/max beside the goal (p99 <= 25 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import stripe
import urllib3

from service.embedded_redis import RedisProcess, free_port
from service.usercom_sandbox import SandboxServer

SECRET = "whsec_latency_bench_0123456789"
API_KEY = "c" * 64


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
    with tempfile.TemporaryDirectory() as tmp:
        redis_server = RedisProcess(Path(tmp) / "redis").start()
        sandbox = SandboxServer(api_key=API_KEY).start()
        users = [f"user-{n}" for n in range(args.events)]
        sandbox.state.seed(users)
        port = free_port()
        env = {
            **os.environ,
            "REDIS_URL": redis_server.url,
            "STRIPE_WEBHOOK_SECRETS": SECRET,
            "USERCOM_API_URL": sandbox.base_url,
            "USERCOM_API_KEY": API_KEY,
            "USERCOM_RATE_LIMIT": "100000",
            "USERCOM_BURST": "1000",
            "USERCOM_MAX_IN_FLIGHT": "1000",
            "RELAY_LOG_LEVEL": "WARNING",
            "RELAY_METRICS_PORT": str(free_port()),
        }
        relay = [sys.executable, "-m", "service.cli"]
        children = [
            subprocess.Popen(
                [*relay, "web", "--bind", f"127.0.0.1:{port}"],
                env=env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
            subprocess.Popen(
                [*relay, "worker", "--concurrency", str(args.workers)],
                env=env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
        ]
        accepted_at: dict[str, float] = {}
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz")
            time.sleep(2)  # workers registered and idle
            http = urllib3.PoolManager(retries=False, timeout=5, maxsize=4)
            start = time.perf_counter()
            for n, user in enumerate(users):
                event = {
                    "id": f"evt_lat_{n}",
                    "object": "event",
                    "created": int(time.time()),
                    "type": "customer.updated",
                    "data": {
                        "object": {"id": f"cus_{n}", "email": f"{user}@example.com", "metadata": {"user_id": user}}
                    },
                }
                body = json.dumps(event)
                header = stripe.WebhookSignature.generate_signature_header(body, SECRET)
                pause = start + n / args.rate - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                response = http.request(
                    "POST",
                    f"http://127.0.0.1:{port}/webhooks/stripe",
                    body=body.encode(),
                    headers={"Content-Type": "application/json", "Stripe-Signature": header},
                )
                if response.status == 202:
                    accepted_at[user] = time.time()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                received = {r["path"].split("/")[-2]: r["at"] for r in sandbox.state.requests if r["method"] == "PUT"}
                if len(received) >= len(accepted_at):
                    break
                time.sleep(0.2)
        finally:
            for child in children:
                os.killpg(child.pid, signal.SIGTERM)
            for child in children:
                child.wait(timeout=60)
            sandbox.stop()
            redis_server.stop()
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
