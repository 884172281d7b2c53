"""Rate limit under backlog: R requests/s, 4 worker processes, a backlog of updates, and a
User.com double that answers 429 whenever more than R calls arrive in any sliding 1 s window.

Prints the 429s seen, the busiest 1 s window and the sustained rate, beside the goals (zero
429s, peak <= R, throughput >= 0.95 R). The relay's limit is set a little under R (--headroom):
arrival times at the server jitter around the limiter's exact schedule.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile

from bench.harness import backend, start, stop, wait_drained


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
    limit = {
        "USERCOM_RATE_LIMIT": str(args.rate * args.headroom),
        "USERCOM_BURST": "1",
        "USERCOM_MAX_IN_FLIGHT": str(args.workers),
    }
    with tempfile.TemporaryDirectory() as tmp, backend(tmp, users=args.updates, rate_limit=args.rate, **limit) as b:
        store = b.queue_updates()
        workers = start(["worker", "--concurrency", str(args.workers)], b.env)
        try:
            wait_drained(store, timeout=4 * args.updates / args.rate + 60)
        finally:
            stop(workers)
        requests = list(b.sandbox.state.requests)
    calls = sorted(r["at"] for r in requests)
    throttled = sum(1 for r in requests if r.get("status") == 429)
    ok = len(calls) - throttled
    span = calls[-1] - calls[0]
    gaps = sorted(b - a for a, b in itertools.pairwise(calls))
    print(
        f"R = {args.rate:g}/s, relay limit {args.rate * args.headroom:g}/s, {args.workers} worker processes, "
        f"{args.updates} queued updates, double enforcing R over every sliding 1 s window"
    )
    print(f"calls {len(calls)}, 429s {throttled}   (goal 0)")
    print(f"peak 1 s window {peak_window(calls)}   (goal <= {args.rate:g})")
    print(
        f"gaps between arrivals: min {gaps[0] * 1000:.1f} ms, p5 {gaps[len(gaps) // 20] * 1000:.1f} ms, "
        f"median {gaps[len(gaps) // 2] * 1000:.1f} ms (limiter spacing {1000 / (args.rate * args.headroom):.1f} ms)"
    )
    print(f"sustained {ok / span:.2f}/s = {ok / span / args.rate:.3f} R over {span:.1f}s   (goal >= 0.95 R)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
