"""Drain rate: N queued updates for distinct users, 2 worker processes, an unthrottled User.com
double. Prints updates applied per second beside what the double itself serves to wrk (the
same PUT, 16 connections) in the same run, and the ratio (goals: >= 1,000/s and >= 0.7x).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
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

API_KEY = "d" * 64
WRK_PUT = """
wrk.method = "PUT"
wrk.body = '{"plan": "pro", "tags": ["paying"]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Token %s"
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--updates", type=int, default=5000, help="queued updates, one per user (default 5000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        redis_server = RedisProcess(Path(tmp) / "redis").start()
        sandbox = SandboxServer(api_key=API_KEY).start()
        users = [f"user-{n}" for n in range(args.updates)]
        sandbox.state.seed(users)
        capacity = None
        if shutil.which("wrk"):
            script = Path(tmp) / "put.lua"
            script.write_text(WRK_PUT % API_KEY)
            out = subprocess.run(
                ["wrk", "-t2", "-c16", "-d5s", "-s", str(script), f"{sandbox.base_url}/users-by-id/user-0/"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            capacity = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
            sandbox.state.requests.clear()
        env = {
            **os.environ,
            "REDIS_URL": redis_server.url,
            "USERCOM_API_URL": sandbox.base_url,
            "USERCOM_API_KEY": API_KEY,
            "USERCOM_RATE_LIMIT": "100000",
            "USERCOM_BURST": "1000",
            "USERCOM_MAX_IN_FLIGHT": "1000",
            "RELAY_LOG_LEVEL": "WARNING",
            "RELAY_METRICS_PORT": str(free_port()),
        }
        store = Store.from_settings(Redis.from_url(redis_server.url), Settings.from_env(env, role="worker"))
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
        started = time.monotonic()
        workers = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker", "--concurrency", str(args.workers)],
            env=env,
            start_new_session=True,
        )
        try:
            while store.ledger()["in_flight"] > 0:
                time.sleep(0.05)
            elapsed = time.monotonic() - started
        finally:
            os.killpg(workers.pid, signal.SIGTERM)
            workers.wait(timeout=60)
            sandbox.stop()
            redis_server.stop()
    rate = args.updates / elapsed
    print(f"{args.updates} updates for distinct users, {args.workers} worker processes, unthrottled double")
    print(f"drained at {rate:.0f} updates/s ({elapsed:.1f}s, worker start-up included)   (goal >= 1000/s)")
    if capacity:
        print(f"the double alone serves {capacity:.0f} PUT/s to wrk: ratio {rate / capacity:.2f}   (goal >= 0.7)")
    else:
        print("wrk not found: the double's own capacity was not measured (apt-get install wrk)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
