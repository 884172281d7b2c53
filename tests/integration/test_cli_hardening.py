"""`relay` commands facing unreachable or busy dependencies: one line each, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from redis import Redis

from service.devtools.embedded_redis import RedisProcess
from service.devtools.usercom_sandbox import SandboxServer
from tests.integration.test_cli import GOOD, RELAY, relay
from tests.ports import unused_port


def test_check_config_connect_reaches_redis_and_each_destination(redis_server: Any, sandbox: SandboxServer) -> None:
    env = {**GOOD, "REDIS_URL": redis_server.url, "USERCOM_API_URL": sandbox.base_url}
    result = relay("check-config", "--connect", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "  redis: reachable" in result.stdout
    assert "  usercom: reachable (HTTP " in result.stdout
    assert not [r for r in sandbox.state.requests if r["method"] != "HEAD"]  # nothing sent but a HEAD


def test_check_config_connect_says_what_is_unreachable_in_one_line_each() -> None:
    dead = unused_port()
    env = {
        **GOOD,
        "REDIS_URL": f"redis://:pw-not-shown@127.0.0.1:{dead}/0",
        "USERCOM_API_URL": f"http://127.0.0.1:{dead}",
    }
    result = relay("check-config", "--connect", env=env)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith("  redis: UNREACHABLE (") for line in lines), result.stdout
    assert any(line.startswith("  usercom: UNREACHABLE (") for line in lines), result.stdout
    assert "Traceback" not in result.stdout + result.stderr and "pw-not-shown" not in result.stdout + result.stderr
    assert result.stderr.strip() == "relay: a dependency is unreachable"


def test_check_config_connect_asks_the_sentinels_when_they_are_configured() -> None:
    dead = unused_port()
    env = {
        **GOOD,
        "REDIS_SENTINELS": f"127.0.0.1:{dead}",
        "REDIS_SENTINEL_MASTER": "relay",
        "REDIS_SENTINEL_PASSWORD": "pw-x",
    }
    env.pop("REDIS_URL", None)
    result = relay("check-config", "--connect", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "  redis: UNREACHABLE (MasterNotFoundError: " in result.stdout, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr and "pw-x" not in result.stdout + result.stderr


def test_a_worker_started_before_redis_waits_for_it(tmp_path: Path) -> None:
    port = unused_port()
    env = {**GOOD, "REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    process = subprocess.Popen(
        [RELAY, "worker", "--lane", "live", "--burst"], env=env, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    deadline = time.monotonic() + 60
    while sum("redis is not reachable" in line for line in lines) < 2:
        assert process.poll() is None, lines
        assert time.monotonic() < deadline, lines
        time.sleep(0.05)
    server = RedisProcess(tmp_path, port=port).start()
    try:
        assert process.wait(timeout=120) == 0, lines
        reader.join(timeout=10)
        assert not [line for line in lines if "Traceback" in line], lines
        waits = [line for line in lines if "redis is not reachable" in line]
        assert all("attempt" in line for line in waits)
    finally:
        server.stop()
        process.stderr.close()  # type: ignore[union-attr]


def test_a_second_worker_on_a_busy_metrics_port_stops_with_one_line(redis_server: Any, redis: Redis) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**GOOD, "REDIS_URL": redis_server.url, "RELAY_METRICS_PORT": str(port)}
        result = relay("worker", env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"relay: RELAY_METRICS_PORT {port} is already in use (another `relay worker` on this host?); set another port"
    ]
    assert redis.scard("rq:workers") == 0  # no worker started


def test_a_web_on_a_busy_address_stops_with_one_line(redis_server: Any) -> None:
    """Not gunicorn's dozen lines of retrying."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = relay("web", "--bind", f"127.0.0.1:{port}", env={**GOOD, "REDIS_URL": redis_server.url})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"relay: 127.0.0.1:{port} is already in use (another relay web?); choose another with --bind or PORT"
    ]
