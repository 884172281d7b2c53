"""What the delivery benchmarks share: Redis, the User.com double with existing users, the relay's
environment, a backlog of updates, worker processes, and waiting for the backlog to drain."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import stripe
import urllib3
from redis import Redis

from service.config import Settings
from service.core.update import UserUpdate
from service.devtools.embedded_redis import RedisProcess, free_port
from service.devtools.usercom_sandbox import SandboxServer
from service.store.ledger import Store

API_KEY = "b" * 64
# A bench stopped with SIGTERM (timeout, kill) still stops what it started: its finally blocks run.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
RELAY = [sys.executable, "-m", "service.cli"]


@dataclass
class Backend:
    redis_server: RedisProcess
    sandbox: SandboxServer
    users: list[str]
    env: dict[str, str]

    def store(self) -> Store:
        return Store.from_settings(Redis.from_url(self.redis_server.url), Settings.from_env(self.env, role="worker"))

    def queue_updates(self, round_: int = 0) -> Store:
        """One update per user, queued as intake would queue it; each round's newer than the last."""
        store = self.store()
        for n, user in enumerate(self.users):
            store.accept(
                UserUpdate(
                    source="stripe",
                    event_id=f"evt_{round_}_{n}" if round_ else f"evt_{n}",
                    event_type="customer.updated",
                    event_time=round_ * len(self.users) + n,
                    user_id=user,
                    customer_id=None,
                    custom={"plan": "pro"},
                )
            )
        return store


@contextmanager
def backend(tmp: str, *, users: int, rate_limit: float | None = None, **relay_env: str) -> Iterator[Backend]:
    """Redis and the double (with `users` existing users); the relay unthrottled unless told."""
    redis_server = RedisProcess(Path(tmp) / "redis").start()
    sandbox = SandboxServer(api_key=API_KEY, rate_limit=rate_limit).start()
    names = [f"user-{n}" for n in range(users)]
    sandbox.state.seed(names)  # existing users: one PUT per update
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
        **relay_env,
    }
    try:
        yield Backend(redis_server, sandbox, names, env)
    finally:
        sandbox.stop()
        redis_server.stop()


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*RELAY, *args], env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def stop(*children: subprocess.Popen[bytes]) -> None:
    for child in children:
        with contextlib.suppress(ProcessLookupError):  # already gone, with its whole group
            os.killpg(child.pid, signal.SIGTERM)
    for child in children:
        child.wait(timeout=60)


def cpu_seconds(roots: dict[str, int], children_of: tuple[str, ...] = ()) -> dict[str, float]:
    """CPU seconds (user + system) so far of each named process, and of its children for the names
    in `children_of` (a gunicorn master's workers, a worker supervisor's workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds = dict.fromkeys(roots, 0.0)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        pid, parent, used = int(entry.name), int(fields[1]), (int(fields[11]) + int(fields[12])) / tick
        for name, root in roots.items():
            if pid == root or (parent == root and name in children_of):
                seconds[name] += used
                break
    return seconds


def wait_drained(store: Store, timeout: float, on_poll: Callable[[int], None] | None = None) -> float:
    """Seconds until nothing is in flight; raises TimeoutError past `timeout`. `on_poll` is told what
    is still in flight at each look (every 50 ms)."""
    started = time.monotonic()
    while (in_flight := store.ledger()["in_flight"]) > 0:
        if on_poll is not None:
            on_poll(in_flight)
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"backlog not drained in {timeout:.0f}s: {store.ledger()}")
        time.sleep(0.05)
    return time.monotonic() - started


def trace_cost(redis: Redis) -> tuple[int, int]:
    """The per-user trace's share of Redis memory after a run: (trace lists, bytes), by MEMORY USAGE."""
    lists = list(redis.scan_iter(match="relay:trace:*", count=1000))
    pipe = redis.pipeline(transaction=False)
    for key in lists:
        pipe.memory_usage(key, samples=0)
    return len(lists), sum(size or 0 for size in pipe.execute())


@dataclass(frozen=True)
class Webhook:
    """One signed customer.updated webhook for `user`."""

    user: str
    event_id: str
    customer_id: str
    email: str


def post_paced(port: int, secret: str, webhooks: list[Webhook], rate: float) -> dict[str, float]:
    """Post the webhooks to `relay web` at `rate` per second, signed with the official stripe package;
    user -> when its (last) 202 came back."""
    http = urllib3.PoolManager(retries=False, timeout=5, maxsize=4)
    accepted: dict[str, float] = {}
    began = time.perf_counter()
    for n, hook in enumerate(webhooks):
        event = {
            "id": hook.event_id,
            "object": "event",
            "created": int(time.time()),
            "type": "customer.updated",
            "data": {"object": {"id": hook.customer_id, "email": hook.email, "metadata": {"user_id": hook.user}}},
        }
        body = json.dumps(event)
        header = stripe.WebhookSignature.generate_signature_header(body, secret)
        pause = began + n / rate - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        answer = http.request(
            "POST",
            f"http://127.0.0.1:{port}/webhooks/stripe",
            body=body.encode(),
            headers={"Content-Type": "application/json", "Stripe-Signature": header},
        )
        if answer.status == 202:
            accepted[hook.user] = time.time()
    return accepted
