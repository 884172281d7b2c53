"""Ingest throughput: signed Stripe webhooks/s accepted by `relay web`, beside a Flask
hello-world served with the same gunicorn settings, in the same run, with the same load
generator (wrk, 16 connections). Prints both figures, the ratio and p50/p99 latency.

Accepted means durably queued: the figure is taken from the relay's own ledger in Redis,
not from response counts. Every request carries a distinct event id, so none is a duplicate.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import stripe
import urllib3
from redis import Redis

from service.cli import gunicorn_argv
from service.config import Settings
from service.embedded_redis import RedisProcess, free_port
from service.store import Store

REPO = Path(__file__).resolve().parents[1]
FIXTURE = (
    REPO.parent / "shared" / "fixtures" / "stripe" / "event.customer.subscription.updated.stripe-docs-example.json"
)
SECRET = "whsec_bench_secret_0123456789"
CONNECTIONS = 16

# wrk script: each thread takes every n-th pre-signed request from the file and cycles them.
WRK_LUA = r"""
local requests, index, counter = {}, 0, 0
local threads = {}
function setup(thread)
  counter = counter + 1
  thread:set("thread_id", counter)
  table.insert(threads, thread)
end
function init(args)
  local path, total = args[1], tonumber(args[2])
  local n = 0
  for line in io.lines(path) do
    if n % total == (thread_id - 1) then
      local sig, body = line:match("^([^\t]+)\t(.*)$")
      table.insert(requests, wrk.format("POST", "/webhooks/stripe",
        {["Content-Type"] = "application/json", ["Stripe-Signature"] = sig}, body))
    end
    n = n + 1
  end
end
function request()
  index = index % #requests + 1
  return requests[index]
end
"""

HELLO_APP = """
from flask import Flask

def create_app():
    app = Flask("hello")

    @app.get("/")
    def hello():
        return "Hello, World!"

    return app
"""


def write_requests(path: Path, count: int, prefix: str) -> None:
    event = json.loads(FIXTURE.read_text())
    timestamp = int(time.time())
    with path.open("w") as out:
        for i in range(count):
            event["id"] = f"evt_{prefix}_{i:08d}"
            body = json.dumps(event, separators=(",", ":"))
            header = stripe.WebhookSignature.generate_signature_header(body, SECRET, timestamp=timestamp)
            out.write(f"{header}\t{body}\n")


def start_gunicorn(argv: list[str], env: dict[str, str], url: str, cwd: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    http = urllib3.PoolManager(retries=False, timeout=1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            http.request("GET", url)
            return process
        except urllib3.exceptions.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{argv} did not start")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=30)


def wrk(url: str, seconds: int, lua: Path | None, lua_args: list[str]) -> dict[str, float]:
    argv = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency"]
    if lua is not None:
        argv += ["-s", str(lua)]
    argv += [url, *lua_args]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def percentile(p: str) -> float:
        value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return {"rps": rps, "p50_ms": percentile("50"), "p99_ms": percentile("99")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="measured seconds per server (default 10)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench/ingest needs wrk (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        redis_server = RedisProcess(tmp / "redis").start()
        env = {**os.environ, "REDIS_URL": redis_server.url, "STRIPE_WEBHOOK_SECRETS": SECRET}
        settings = Settings.from_env(env, role="web")
        warmup_file, requests_file, lua = tmp / "warmup.tsv", tmp / "requests.tsv", tmp / "post.lua"
        lua.write_text(WRK_LUA)
        # More events than the relay can take in the time: none is sent twice.
        write_requests(warmup_file, 12_000 * 2, "warmup")
        write_requests(requests_file, 12_000 * args.seconds, "bench")
        (tmp / "hello_app.py").write_text(HELLO_APP)
        results = {}
        try:
            port = free_port()
            hello = [*gunicorn_argv(settings, f"127.0.0.1:{port}")[:-1], "hello_app:create_app()"]
            process = start_gunicorn(hello, env, f"http://127.0.0.1:{port}/", tmp)
            wrk(f"http://127.0.0.1:{port}/", 2, None, [])  # warm-up
            results["hello"] = wrk(f"http://127.0.0.1:{port}/", args.seconds, None, [])
            stop(process)

            port = free_port()
            process = start_gunicorn(
                gunicorn_argv(settings, f"127.0.0.1:{port}"), env, f"http://127.0.0.1:{port}/healthz", REPO
            )
            redis = Redis.from_url(redis_server.url)
            store = Store(redis, dedup_ttl=settings.dedup_ttl_seconds)
            wrk(f"http://127.0.0.1:{port}/", 2, lua, [str(warmup_file), "2"])
            before = store.ledger()
            results["relay"] = wrk(f"http://127.0.0.1:{port}/", args.seconds, lua, [str(requests_file), "2"])
            after = store.ledger()
            stop(process)
        finally:
            redis_server.stop()
    accepted = (after["received"] - before["received"]) / args.seconds
    duplicates = after["duplicates"] - before["duplicates"]
    hello_rps = results["hello"]["rps"]
    print(
        f"gunicorn {settings.web_workers} gthread workers x {settings.web_threads} threads, "
        f"wrk 2 threads x {CONNECTIONS} connections, {args.seconds}s each, event {FIXTURE.name}"
    )
    print(f"{'server':<8} {'req/s':>9} {'accepted/s':>11} {'p50 ms':>8} {'p99 ms':>8}")
    print(
        f"{'hello':<8} {hello_rps:>9.0f} {'-':>11} {results['hello']['p50_ms']:>8.2f} "
        f"{results['hello']['p99_ms']:>8.2f}"
    )
    print(
        f"{'relay':<8} {results['relay']['rps']:>9.0f} {accepted:>11.0f} {results['relay']['p50_ms']:>8.2f} "
        f"{results['relay']['p99_ms']:>8.2f}"
    )
    print(f"ratio accepted/hello: {accepted / hello_rps:.2f}   (goal >= 0.60, p99 <= 10 ms)")
    if duplicates:
        print(f"warning: {duplicates} requests were duplicates (event list too short)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
