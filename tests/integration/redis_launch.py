"""redis-server processes with arguments of a test's own (an ACL file, a replica, a sentinel), and
`relay web` / `relay worker` as subprocesses: for the ACL and Sentinel tests."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import urllib3
from redis import Redis
from redis.exceptions import RedisError

from service.devtools.embedded_redis import find_redis_server
from tests.conftest import close_connections
from tests.ports import unused_port

RELAY = str(Path(sys.executable).with_name("relay"))
PORT_ATTEMPTS = 3


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `condition` until it returns something truthy; errors count as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except (RedisError, urllib3.exceptions.HTTPError, OSError):
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class Server:
    """One redis-server (or sentinel) child process on 127.0.0.1."""

    def __init__(self, workdir: Path, args: list[str], *, port: int | None = None, sentinel: bool = False) -> None:
        self.port = port or unused_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        if sentinel:  # a sentinel rewrites its config file: it must be its own, writable
            conf = workdir / "sentinel.conf"
            conf.write_text("\n".join(args) + "\n")
            argv = [find_redis_server(), str(conf), "--sentinel"]
        else:
            argv = [find_redis_server(), *args]
        argv += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(workdir), "--logfile", "redis.log"]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def log(self) -> str:
        path = self.workdir / "redis.log"
        return path.read_text() if path.exists() else ""

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def start_redis(workdir: Path, *args: str, port: int | None = None, **client: Any) -> tuple[Server, Redis]:
    """A redis-server with append-only persistence, once it answers as itself (with `client`
    credentials, which may read INFO). A port unused_port found, but something took before the server
    could bind it, is replaced by another (up to PORT_ATTEMPTS) unless the port was given."""
    base = ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction"]
    for attempt in range(1, PORT_ATTEMPTS + 1):
        (workdir / "redis.log").unlink(missing_ok=True)  # this attempt's reasons only
        server = Server(workdir, [*base, *args], port=port)
        redis = Redis(port=server.port, socket_timeout=5, socket_connect_timeout=5, **client)
        wait_until(functools.partial(_answers_or_exited, redis, server), 30, "redis-server")
        if server.process.poll() is None:
            return server, redis
        redis.close()
        if port is not None or "Address already in use" not in server.log() or attempt == PORT_ATTEMPTS:
            break
    raise AssertionError(f"redis-server exited: {server.log()[-500:]}")


def _answers_or_exited(redis: Redis, server: Server) -> bool:
    """The server exited, or answers as itself: not another on the same port (the one that took it first)."""
    return server.process.poll() is not None or redis.info("server")["process_id"] == server.process.pid


def start_relay(tmp_path: Path, env: dict[str, str], *roles: str) -> tuple[str, dict[str, subprocess.Popen[bytes]]]:
    """`relay web` (gunicorn) and/or `relay worker`, logging to <role>.log in `tmp_path`; returns the
    web's base URL once /readyz answers 200 (start_web)."""
    full = {**os.environ, "RELAY_METRICS_PORT": str(unused_port()), **env}
    processes, base = {}, ""
    if "worker" in roles:
        with (tmp_path / "worker.log").open("wb") as log:
            processes["worker"] = subprocess.Popen([RELAY, "worker"], env=full, stdout=log, stderr=subprocess.STDOUT)
    if "web" in roles:
        try:
            processes["web"], base = start_web(tmp_path / "web.log", full)
        except BaseException:  # the worker started: stopped, not left running after the suite
            stop_relay(processes)
            raise
    return base, processes


def start_web(log: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """`relay web` logging to `log`, and its base URL once /readyz answers 200. It binds a port of
    the system's choosing, read from its own log: no other process's port (a port found free beforehand
    could be taken before the bind) can answer for it."""
    with log.open("wb") as out:
        web = subprocess.Popen([RELAY, "web", "--bind", "127.0.0.1:0"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        port = wait_until(lambda: _listening_port(log, web), 60, "gunicorn's listening line")
        base = f"http://127.0.0.1:{port}"
        http = urllib3.PoolManager(retries=False, timeout=5)
        wait_until(lambda: http.request("GET", f"{base}/readyz").status == 200, 60, f"/readyz; {log}")
    except BaseException:  # not left running after the suite
        web.kill()
        web.wait()
        raise
    close_connections(http)
    return web, base


def _listening_port(log: Path, web: subprocess.Popen[bytes]) -> int | None:
    """The port gunicorn says it listens on (None until it says so); fails if it exited first."""
    text = log.read_text(errors="replace")
    found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", text)
    assert found or web.poll() is None, f"relay web exited ({web.returncode}): {text[-2000:]}"
    return int(found.group(1)) if found else None


def stop_relay(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    for process in processes.values():
        process.terminate()
    for process in processes.values():
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
