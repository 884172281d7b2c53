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
from service.ops.status import collect_status
from tests.ports import unused_port

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


class Supervisor:
    """One `relay worker --concurrency 2` shared by the module's tests, started again (on an emptied
    Redis) for a test that finds the last one killed by the test before it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.redis = Redis.from_url(url)
        self.process: subprocess.Popen[bytes] | None = None
        self.children: set[int] = set()

    def running(self) -> tuple[subprocess.Popen[bytes], set[int]]:
        if self.process is None or self.process.poll() is not None:
            self.kill()
            self.start()
        assert self.process is not None
        return self.process, self.children

    def start(self) -> None:
        self.redis.flushall()  # no worker registered by an earlier test counts
        env = {**ENV, "REDIS_URL": self.url, "RELAY_METRICS_PORT": str(unused_port())}
        self.process = process = subprocess.Popen(
            [RELAY, "worker", "--concurrency", "2"], env=env, stderr=subprocess.DEVNULL
        )
        # Generous: on a loaded machine seven Python processes take a while to start.
        wait_for(lambda: len(descendants(process.pid)) >= PROCESSES, "workers and schedulers did not start", 90)
        wait_for(
            lambda: (
                self.redis.scard("rq:workers:relay-delivery") == 2
                and self.redis.scard("rq:workers:relay-replay") == 1
                and self.redis.scard("rq:workers:relay-backfill") == 1
            ),
            "workers did not register",
            90,
        )
        self.children = descendants(process.pid)

    def kill(self) -> None:
        # Killed whatever happened: a worker left running would take jobs from the shared Redis of
        # every later test (one failed start here once failed 36 tests after it).
        if self.process is None:
            return
        for pid in alive(self.children | descendants(self.process.pid) | {self.process.pid}):  # only ours
            os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process, self.children = None, set()


@pytest.fixture(scope="module")
def supervisors(redis_server: Any) -> Iterator[Supervisor]:
    shared = Supervisor(redis_server.url)
    try:
        yield shared
    finally:
        shared.kill()
        shared.redis.flushall()
        shared.redis.close()


@pytest.fixture
def supervisor(supervisors: Supervisor) -> Iterator[tuple[subprocess.Popen[bytes], set[int]]]:
    try:
        yield supervisors.running()
    except BaseException:
        supervisors.kill()  # a failed start leaves nothing behind
        raise


# The test that kills the supervisor comes after the one that only looks at it: both share one.
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


def test_a_killed_supervisor_takes_every_worker_and_scheduler_with_it(
    supervisor: tuple[subprocess.Popen[bytes], set[int]], supervisors: Supervisor, redis_server: Any
) -> None:
    process, children = supervisor
    assert len(children) == PROCESSES
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    wait_for(lambda: not alive(children), f"still running after the supervisor died: {alive(children)}")
    settings = Settings.from_env({**ENV, "REDIS_URL": redis_server.url})
    workers = collect_status(supervisors.redis, settings)["destinations"]["usercom"]["workers"]
    assert workers == {"live": 0, "replay": 0, "backfill": 0}


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
