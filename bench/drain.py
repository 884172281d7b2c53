"""Drain rate: N queued updates for distinct users, 2 worker processes, an unthrottled User.com
double. Prints updates applied per second beside what the double itself serves to wrk (the
same PUT, 16 connections) in the same run, and the ratio (goals: >= 1,000/s and >= 0.8x); the CPU
each kind of process spends per delivery, and what 0.8x would leave for it on this machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.harness import API_KEY, backend, start, stop, trace_cost, wait_drained

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


def cpu_seconds(supervisor: int, redis_pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of the workers (`relay worker`'s supervisor and its children),
    redis-server and this process (the User.com double, and the bench's own polling)."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds = {"workers": 0.0, "redis": 0.0, "double + bench": 0.0}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        pid, parent, used = int(entry.name), int(fields[1]), (int(fields[11]) + int(fields[12])) / tick
        if supervisor in (pid, parent):
            seconds["workers"] += used
        elif pid == redis_pid:
            seconds["redis"] += used
        elif pid == os.getpid():
            seconds["double + bench"] += used
    return seconds


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
            self.marks.append((done, cpu_seconds(self.supervisor, self.redis_pid)))

    def per_delivery(self) -> tuple[dict[str, float], int]:
        """µs of CPU per delivery by kind, and over how many deliveries ({} and 0 if not measured)."""
        if len(self.marks) < 2:
            return {}, 0
        (first, before), (last, after) = self.marks
        count = last - first
        return {kind: (after[kind] - before[kind]) / count * 1e6 for kind in before}, count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--updates", type=int, default=5000, help="queued updates, one per user (default 5000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument(
        "--trace-per-user", type=int, default=20, help="RELAY_TRACE_PER_USER (default 20; 0: measure without the trace)"
    )
    args = parser.parse_args()
    trace = {"RELAY_TRACE_PER_USER": str(args.trace_per_user)}
    with tempfile.TemporaryDirectory() as tmp, backend(tmp, users=args.updates, **trace) as b:
        capacity = double_capacity(tmp, f"{b.sandbox.base_url}/users-by-id/user-0/")
        store = b.queue_updates()
        queued_at = time.time()  # wrk's calls are recorded too: only later ones count
        workers = start(["worker", "--concurrency", str(args.workers)], b.env)
        try:
            marks = CpuMarks(workers.pid, b.redis_server.process.pid, args.updates)  # type: ignore[union-attr]
            elapsed = wait_drained(store, timeout=600, on_poll=marks)
        finally:
            stop(workers)
        calls = sorted(r["at"] for r in b.sandbox.state.requests if r["at"] >= queued_at)
        traces, trace_bytes = trace_cost(store.redis)
    rate = (len(calls) - 1) / (calls[-1] - calls[0])
    print(f"{args.updates} updates for distinct users, {args.workers} worker processes, unthrottled double")
    print(
        f"drained at {rate:.0f} updates/s from the first call to the last ({calls[-1] - calls[0]:.1f}s, "
        f"{len(calls)} calls); {args.updates / elapsed:.0f}/s counting worker start-up   (goal >= 1000/s)"
    )
    print(
        f"trace (RELAY_TRACE_PER_USER={args.trace_per_user}): {trace_bytes / max(1, traces):.0f} B per user in Redis; "
        "its time cost: compare with --trace-per-user 0"
    )
    # Without the workers' start-up (their imports compete for the CPU) and the last, short-queue stretch.
    middle = calls[len(calls) // 10 : len(calls) * 9 // 10]
    steady = (len(middle) - 1) / (middle[-1] - middle[0])
    print(f"steady: {steady:.0f} updates/s over the middle 80% of the calls")
    cpu, measured = marks.per_delivery()
    if measured:
        parts = ", ".join(f"{kind} {cpu[kind]:.0f}" for kind in cpu)
        print(
            f"CPU per delivery (10-90 % drained, {measured} deliveries): {parts} µs; {sum(cpu.values()):.0f} µs in all"
        )
    if capacity:
        print(f"the double alone serves {capacity:.0f} PUT/s to wrk: ratio {rate / capacity:.2f}   (goal >= 0.8)")
        print(f"steady ratio {steady / capacity:.2f}")
        cores = os.cpu_count() or 1
        budget = cores / (0.8 * capacity) * 1e6
        print(f"0.8x on this machine's {cores} cores leaves {budget:.0f} µs of CPU a delivery in all (the double too)")
    else:
        print("wrk not found: the double's own capacity was not measured (apt-get install wrk)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
