"""`relay worker` killed outright (`kill -9`) takes its workers and their rq schedulers with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from service.config import Settings
from service.devtools.embedded_redis import free_port
from service.ops.status import collect_status

RELAY = str(Path(sys.executable).with_name("relay"))
ENV = {
    "PATH": "/usr/bin:/bin",
    "STRIPE_WEBHOOK_SECRETS": "whsec_cli_test",
    "USERCOM_API_URL": "https://acme.user.com/api/public",
    "USERCOM_API_KEY": "usercom-key-not-shown",
}
# --concurrency 2: two live workers, one replay and one backfill worker, and one rq scheduler per queue.
PROCESSES = 7


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[1])  # a zombie has exited


def descendants(root: int) -> set[int]:
    parents = {int(p.name): _parent(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if _parent(pid) is not None}


def sockets(pid: int) -> set[str]:
    fds = Path(f"/proc/{pid}/fd")
    links = set()
    for fd in fds.iterdir():
        try:
            links.add(os.readlink(fd))
        except OSError:
            continue
    return {link for link in links if link.startswith("socket:")}


def wait_for(condition: Any, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.fixture
def supervisor(redis: Redis, redis_server: Any) -> Iterator[tuple[subprocess.Popen[bytes], set[int]]]:
    env = {**ENV, "REDIS_URL": redis_server.url, "RELAY_METRICS_PORT": str(free_port())}
    process = subprocess.Popen([RELAY, "worker", "--concurrency", "2"], env=env, stderr=subprocess.DEVNULL)
    children: set[int] = set()
    try:
        # Generous: on a loaded machine seven Python processes take a while to start.
        wait_for(lambda: len(descendants(process.pid)) >= PROCESSES, "workers and schedulers did not start", 90)
        wait_for(
            lambda: (
                redis.scard("rq:workers:relay-delivery") == 2
                and redis.scard("rq:workers:relay-replay") == 1
                and redis.scard("rq:workers:relay-backfill") == 1
            ),
            "workers did not register",
            90,
        )
        children = descendants(process.pid)
        yield process, children
    finally:
        # Killed whatever happened: a worker left running would take jobs from the shared Redis of
        # every later test (one failed start here once failed 36 tests after it).
        for pid in alive(children | descendants(process.pid) | {process.pid}):  # only what this test started
            os.kill(pid, signal.SIGKILL)
        process.wait(timeout=30)


def test_a_killed_supervisor_takes_every_worker_and_scheduler_with_it(
    supervisor: tuple[subprocess.Popen[bytes], set[int]], redis_server: Any, redis: Redis
) -> None:
    process, children = supervisor
    assert len(children) == PROCESSES
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    wait_for(lambda: not alive(children), f"still running after the supervisor died: {alive(children)}")
    settings = Settings.from_env({**ENV, "REDIS_URL": redis_server.url})
    workers = collect_status(redis, settings)["destinations"]["usercom"]["workers"]
    assert workers == {"live": 0, "replay": 0, "backfill": 0}


def test_a_scheduler_fork_holds_none_of_its_workers_sockets(
    supervisor: tuple[subprocess.Popen[bytes], set[int]],
) -> None:
    process, _ = supervisor
    workers = {pid for pid in descendants(process.pid) if _parent(pid) == process.pid}
    schedulers = [(pid, _parent(pid)) for pid in descendants(process.pid) - workers]
    assert len(schedulers) == 3
    for scheduler, worker in schedulers:
        assert worker is not None
        # Right after the fork the child holds them all: it closes them before it starts scheduling.
        wait_for(lambda s=scheduler, w=worker: not sockets(s) & sockets(w), "the scheduler holds its worker's sockets")


def test_status_counts_a_worker_killed_without_deregistering_as_gone(redis: Redis, redis_server: Any) -> None:
    settings = Settings.from_env({**ENV, "REDIS_URL": redis_server.url})
    stale, fresh = "rq:worker:stale", "rq:worker:fresh"
    redis.sadd("rq:workers:relay-delivery", stale, fresh)
    redis.hset(stale, "last_heartbeat", "2020-01-01T00:00:00.000000Z")
    redis.hset(fresh, "last_heartbeat", time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()))
    assert collect_status(redis, settings)["destinations"]["usercom"]["workers"] == {
        "live": 1,
        "replay": 0,
        "backfill": 0,
    }
