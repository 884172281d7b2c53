"""Rate limit under backlog: R requests/s, 4 worker processes, a backlog of updates, and a
User.com double that answers 429 whenever more than R calls arrive in any sliding 1 s window.

Three cases, one command each (figures printed, never asserted):
- bench/ratelimit: the relay configured at exactly R. Goals: zero 429s, peak <= R, >= 0.95 R.
- bench/ratelimit-unknown (--ceiling 2): configured at 2 R, the limit unknown. Goals: <= 3 % of
  calls answered 429, >= 0.85 R sustained after the first 30 s; prints how fast it converged.
- bench/ratelimit-drop (--drop-after 30): the double's limit drops from R to R/2 mid-run; prints
  the time until 429s stop.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import threading
import time

from redis import Redis

from bench.harness import backend, start, stop, wait_drained
from service.store import keys
from service.store.limiter_scripts import effective_rate, increase_per_second


def peak_window(times: list[float], width: float = 1.0) -> int:
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best


def sample_rates(redis: Redis, ceiling: float, done: threading.Event, every: float = 5.0) -> list[float]:
    """The cluster's effective rate every `every` seconds (read from the limiter's state)."""
    samples: list[float] = []

    def run() -> None:
        while not done.wait(every):
            base, at = redis.hmget(keys.USERCOM.limiter_rate, "base", "at")
            seconds, micros = redis.time()
            now_ms = seconds * 1000 + micros / 1000
            rate = effective_rate(
                float(base) if base else None, float(at) if at else None, now_ms, ceiling, increase_per_second(ceiling)
            )
            samples.append(rate)

    threading.Thread(target=run, daemon=True).start()
    return samples


def converged_at(throttled: list[float], start: float, quiet: float = 10.0) -> float | None:
    """Seconds from the start to the last 429 before the first `quiet` seconds without one."""
    last = start
    for t in throttled:
        if t - last >= quiet:
            return last - start
        last = t
    return last - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=20.0, help="R: the double's limit, calls/s (default 20)")
    parser.add_argument("--updates", type=int, default=2000, help="backlog size (default 2000)")
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--ceiling", type=float, default=1.0, help="relay limit = ceiling x R (default 1)")
    parser.add_argument("--drop-after", type=float, default=None, help="seconds in, the double's limit halves")
    parser.add_argument(
        "--burst", type=int, default=1, help="USERCOM_BURST (default 1; above 1 a worker books runs of slots)"
    )
    args = parser.parse_args()
    relay_rate = args.rate * args.ceiling
    limit = {
        "USERCOM_RATE_LIMIT": str(relay_rate),
        "USERCOM_BURST": str(args.burst),
        "USERCOM_MAX_IN_FLIGHT": str(args.workers),
    }
    dropped_at: float | None = None
    with tempfile.TemporaryDirectory() as tmp, backend(tmp, users=args.updates, rate_limit=args.rate, **limit) as b:
        store = b.queue_updates()
        done = threading.Event()
        rates = sample_rates(Redis.from_url(b.redis_server.url), relay_rate, done)
        workers = start(["worker", "--concurrency", str(args.workers)], b.env)
        begun = time.time()
        try:
            if args.drop_after is not None:
                while store.ledger()["in_flight"] > 0 and time.time() - begun < args.drop_after:
                    time.sleep(0.1)
                b.sandbox.state.rate_limit = args.rate / 2
                dropped_at = time.time()
            wait_drained(store, timeout=8 * args.updates / args.rate + 120)
        finally:
            done.set()
            stop(workers)
        requests = list(b.sandbox.state.requests)
    report(args, requests, rates, dropped_at)
    return 0


def report(args: argparse.Namespace, requests: list[dict], rates: list[float], dropped_at: float | None) -> None:
    calls = sorted(r["at"] for r in requests)
    throttled = sorted(r["at"] for r in requests if r.get("status") == 429)
    ok = sorted(r["at"] for r in requests if r.get("status") != 429)
    first, span = calls[0], calls[-1] - calls[0]
    gaps = sorted(b - a for a, b in itertools.pairwise(calls))
    print(
        f"R = {args.rate:g}/s, relay limit {args.rate * args.ceiling:g}/s, {args.workers} worker processes, "
        f"{args.updates} queued updates, double enforcing R over every sliding 1 s window"
        + (f", halved to R/2 after {args.drop_after:g}s" if dropped_at else "")
    )
    print(f"calls {len(calls)}, 429s {len(throttled)} = {100 * len(throttled) / len(calls):.1f} % of calls")
    ok_windows = peak_window(ok)
    print(f"peak 1 s window {peak_window(calls)} calls ({ok_windows} answered 2xx)   (R = {args.rate:g})")
    print(
        f"gaps between arrivals: min {gaps[0] * 1000:.1f} ms, p5 {gaps[len(gaps) // 20] * 1000:.1f} ms, "
        f"median {gaps[len(gaps) // 2] * 1000:.1f} ms"
    )
    print(f"sustained {len(ok) / span:.2f}/s = {len(ok) / span / args.rate:.3f} R over {span:.1f}s")
    after = [t for t in ok if t >= first + 30]
    if args.ceiling != 1.0 and after and calls[-1] > first + 30:
        rate = len(after) / (calls[-1] - first - 30)
        print(f"sustained after the first 30 s {rate:.2f}/s = {rate / args.rate:.3f} R   (goal >= 0.85 R)")
        converged = converged_at(throttled, first)
        print(f"converged (last 429 before 10 s without one) {converged:.1f}s after the first call")
    if dropped_at is not None:
        late = [t for t in throttled if t >= dropped_at]
        settled = converged_at(late, dropped_at) if late else 0.0
        probes = [t for t in late if t > dropped_at + settled]
        print(
            f"limit halved at {dropped_at - first:.1f}s: 429s stopped {settled:.1f}s after it "
            f"(last 429 before 10 s without one); then {len(probes)} probing 429s in the "
            f"{calls[-1] - dropped_at - settled:.0f}s left (AIMD growing back over the limit)"
        )
        post = [t for t in ok if t >= dropped_at + settled]
        if len(post) > 1:
            rate = len(post) / (post[-1] - post[0])
            print(f"after that: {rate:.2f}/s = {rate / (args.rate / 2):.3f} x (R/2)")
    print("effective rate every 5 s: " + ", ".join(f"{r:.1f}" for r in rates))


if __name__ == "__main__":
    raise SystemExit(main())
