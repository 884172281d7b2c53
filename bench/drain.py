"""Drain rate: N queued updates for distinct users, 2 worker processes, an unthrottled User.com
double. Prints updates applied per second beside what the double itself serves to wrk (the
same PUT, 16 connections) just before, and the ratio (goals: >= 1,000/s and >= 0.8x); the CPU
each kind of process spends per delivery, how many of the cores it keeps busy, and what 0.8x would
leave for it on this machine.

Each round is wrk, then a fresh backlog drained by fresh workers, so the pair sees the same load
on a shared machine; the figures reported are the medians of the rounds (one round's ratio varied
by 0.1 from run to run).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.harness import API_KEY, Backend, backend, cpu_seconds, start, stop, trace_cost, wait_drained

WRK_PUT = """
wrk.method = "PUT"
wrk.body = '{"plan": "pro", "tags": ["paying"]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Token %s"
"""


def double_capacity(tmp: str, url: str) -> float | None:
    if shutil.which("wrk") is None:
        return None
    script = Path(tmp) / "put.lua"
    script.write_text(WRK_PUT % API_KEY)
    out = subprocess.run(
        ["wrk", "-t2", "-c16", "-d5s", "-s", str(script), url], capture_output=True, text=True, check=True
    ).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


class CpuMarks:
    """CPU seconds per kind of process at 10 % and at 90 % drained (the workers' start-up and the
    short-queue end left out), as wait_drained polls."""

    def __init__(self, supervisor: int, redis_pid: int, total: int) -> None:
        self.supervisor, self.redis_pid, self.total = supervisor, redis_pid, total
        self.marks: list[tuple[int, dict[str, float]]] = []

    def __call__(self, in_flight: int) -> None:
        done = self.total - in_flight
        due = self.total // 10 if not self.marks else self.total * 9 // 10
        if len(self.marks) < 2 and done >= due:
            roots = {"workers": self.supervisor, "redis": self.redis_pid, "double + bench": os.getpid()}
            self.marks.append((done, cpu_seconds(roots, children_of=("workers",))))

    def per_delivery(self) -> tuple[dict[str, float], int]:
        """µs of CPU per delivery by kind, and over how many deliveries ({} and 0 if not measured)."""
        if len(self.marks) < 2:
            return {}, 0
        (first, before), (last, after) = self.marks
        count = last - first
        return {kind: (after[kind] - before[kind]) / count * 1e6 for kind in before}, count


@dataclass
class Round:
    capacity: float | None  # what the double serves to wrk just before
    rate: float  # updates/s from the first call to the last
    steady: float  # over the middle 80 % of the calls
    elapsed: float  # counting the workers' start-up
    cpu: dict[str, float]  # µs per delivery by kind of process, 10-90 % drained


def drain_round(b: Backend, tmp: str, round_: int, updates: int, workers: int) -> Round:
    """wrk on the double, then `updates` queued and drained by `workers` fresh worker processes."""
    capacity = double_capacity(tmp, f"{b.sandbox.base_url}/users-by-id/user-0/")
    store = b.queue_updates(round_)
    queued_at = time.time()  # wrk's calls are recorded too: only later ones count
    supervisor = start(["worker", "--concurrency", str(workers)], b.env)
    try:
        marks = CpuMarks(supervisor.pid, b.redis_server.process.pid, updates)  # type: ignore[union-attr]
        elapsed = wait_drained(store, timeout=600, on_poll=marks)
    finally:
        stop(supervisor)
    calls = sorted(r["at"] for r in b.sandbox.state.requests if r["at"] >= queued_at)
    # Without the workers' start-up (their imports compete for the CPU) and the last, short-queue stretch.
    middle = calls[len(calls) // 10 : len(calls) * 9 // 10]
    return Round(capacity, per_second(calls), per_second(middle), elapsed, marks.per_delivery()[0])


def per_second(times: list[float]) -> float:
    """Calls a second from the first of these (sorted) call times to the last."""
    return (len(times) - 1) / (times[-1] - times[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--updates", type=int, default=5000, help="queued updates, one per user (default 5000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="wrk-then-drain rounds; medians reported (default 3)")
    parser.add_argument(
        "--trace-per-user", type=int, default=20, help="RELAY_TRACE_PER_USER (default 20; 0: measure without the trace)"
    )
    args = parser.parse_args()
    trace = {"RELAY_TRACE_PER_USER": str(args.trace_per_user)}
    with tempfile.TemporaryDirectory() as tmp, backend(tmp, users=args.updates, **trace) as b:
        rounds = [drain_round(b, tmp, n, args.updates, args.workers) for n in range(args.rounds)]
        traces, trace_bytes = trace_cost(b.store().redis)
    print(f"{args.updates} updates for distinct users, {args.workers} worker processes, unthrottled double")
    print("round  double (wrk) PUT/s  drained/s  steady/s  ratio  steady ratio  CPU µs a delivery (10-90 % drained)")
    for n, r in enumerate(rounds, 1):
        cpu = ", ".join(f"{kind} {r.cpu[kind]:.0f}" for kind in r.cpu) + f"; {sum(r.cpu.values()):.0f} in all"
        double, ratio, steady = "-", "-", "-"
        if r.capacity:
            double, ratio, steady = f"{r.capacity:.0f}", f"{r.rate / r.capacity:.2f}", f"{r.steady / r.capacity:.2f}"
        print(f"{n:<6} {double:>18} {r.rate:>10.0f} {r.steady:>9.0f} {ratio:>6} {steady:>13}  {cpu}")
    rate = statistics.median(r.rate for r in rounds)
    started = statistics.median(args.updates / r.elapsed for r in rounds)
    print(
        f"median: drained at {rate:.0f} updates/s from the first call to the last; "
        f"{started:.0f}/s counting worker start-up   (goal >= 1000/s)"
    )
    print(
        f"trace (RELAY_TRACE_PER_USER={args.trace_per_user}): {trace_bytes / max(1, traces):.0f} B per user in Redis; "
        "its time cost: compare with --trace-per-user 0"
    )
    measured = [r for r in rounds if r.cpu]
    if measured:
        cpu = {kind: statistics.median(r.cpu[kind] for r in measured) for kind in measured[0].cpu}
        parts = ", ".join(f"{kind} {cpu[kind]:.0f}" for kind in cpu)
        busy = statistics.median(r.steady * sum(r.cpu.values()) / 1e6 for r in measured)
        print(
            f"median CPU per delivery: {parts} µs; {sum(cpu.values()):.0f} µs in all; "
            f"{busy:.2f} of {os.cpu_count()} cores busy while draining"
        )
    paired = [r for r in rounds if r.capacity]
    if paired:
        capacity = statistics.median(r.capacity for r in paired if r.capacity)
        ratio = statistics.median(r.rate / r.capacity for r in paired if r.capacity)
        steady = statistics.median(r.steady / r.capacity for r in paired if r.capacity)
        print(
            f"median ratio to what the double serves to wrk just before (median {capacity:.0f} PUT/s): "
            f"{ratio:.2f}, steady {steady:.2f}   (goal >= 0.8)"
        )
        cores = os.cpu_count() or 1
        budget = cores / (0.8 * capacity) * 1e6
        print(f"0.8x on this machine's {cores} cores leaves {budget:.0f} µs of CPU a delivery in all (the double too)")
    else:
        print("wrk not found: the double's own capacity was not measured (apt-get install wrk)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
