"""/healthz and signed-webhook latency under slow clients: `--sockets` connections (half stalled
mid-headers, half mid-body) held open against a real `relay web`, while requests are timed one by one.

Runs the default worker (gevent, `relay web`) and gunicorn's gthread with the same workers and
threads (2 x 4) for comparison. Prints p50 / p99 / max and how many requests got no answer in
`--timeout` seconds; the goal is every request answered within 1 s.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import stripe
import urllib3

from bench.harness import backend, start, stop
from bench.latency import wait_http
from service.cli import gunicorn_argv
from service.config import Settings
from service.devtools.embedded_redis import free_port

SECRET = "whsec_slowclients_bench_0123456789"


def slow_sockets(port: int, count: int) -> list[socket.socket]:
    opened = []
    for n in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        if n % 2:
            sock.sendall(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: appl")  # mid-headers
        else:
            sock.sendall(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")  # mid-body
        opened.append(sock)
    return opened


def timed(http: urllib3.PoolManager, base: str, n: int) -> float | None:
    """Seconds for one /healthz (even n) or one signed webhook (odd n); None without an answer."""
    started = time.perf_counter()
    try:
        if n % 2 == 0:
            http.request("GET", f"{base}/healthz", headers={"Connection": "close"})
        else:
            payload = json.dumps({"id": f"evt_sc_{n}", "type": "ping", "created": int(time.time()), "data": {}})
            signature = stripe.WebhookSignature.generate_signature_header(payload, SECRET, timestamp=int(time.time()))
            headers = {"Stripe-Signature": signature, "Content-Type": "application/json", "Connection": "close"}
            http.request("POST", f"{base}/webhooks/stripe", body=payload.encode(), headers=headers)
    except urllib3.exceptions.HTTPError:
        return None
    return time.perf_counter() - started


def run(label: str, child: subprocess.Popen[bytes], port: int, args: argparse.Namespace) -> None:
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz")
        held = slow_sockets(port, args.sockets)
        http = urllib3.PoolManager(retries=False, timeout=args.timeout)
        times = [timed(http, base, n) for n in range(args.requests)]
        for sock in held:
            sock.close()
    finally:
        stop(child)
    answered = sorted(t for t in times if t is not None)
    missing = len(times) - len(answered)
    if not answered:
        print(f"{label:8} {args.sockets} slow sockets: no answer to any of {len(times)} requests in {args.timeout} s")
        return
    p99 = answered[min(len(answered) - 1, int(len(answered) * 0.99))]
    print(
        f"{label:8} {args.sockets} slow sockets: {len(answered)}/{len(times)} answered; "
        f"p50 {statistics.median(answered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {answered[-1] * 1000:.1f} ms"
        + (f"; {missing} unanswered in {args.timeout} s" if missing else "")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sockets", type=int, default=50, help="slow sockets held open (default 50)")
    parser.add_argument("--requests", type=int, default=40, help="timed requests, healthz and webhook (default 40)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds before a request counts unanswered")
    parser.add_argument("--skip-gthread", action="store_true", help="only the default worker")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, backend(tmp, users=1, STRIPE_WEBHOOK_SECRETS=SECRET) as b:
        port = free_port()
        run("gevent", start(["web", "--bind", f"127.0.0.1:{port}"], b.env), port, args)
        if not args.skip_gthread:
            port = free_port()
            argv = gunicorn_argv(Settings.from_env(b.env, role="web"), f"127.0.0.1:{port}")
            argv[argv.index("--worker-class") + 1] = "gthread"
            metrics = Path(tmp) / "gthread-metrics"
            metrics.mkdir()
            env = {**b.env, "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
            child = subprocess.Popen(
                argv, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            run("gthread", child, port, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
