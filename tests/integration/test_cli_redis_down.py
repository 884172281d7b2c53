"""`relay dlq` and `relay trace` with Redis down: one line naming where it was looked for (no
password), a non-zero exit, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.ports import unused_port

RELAY = str(Path(sys.executable).with_name("relay"))
PASSWORD = "pw-never-printed"


@pytest.mark.parametrize(
    "args",
    [
        ["dlq", "list"],
        ["dlq", "list", "--json"],
        ["dlq", "show", "stripe-evt_1"],
        ["dlq", "replay", "stripe-evt_1"],
        ["dlq", "purge", "--all", "--reason", "retries_exhausted", "--dry-run"],
        ["trace", "u1"],
        ["trace", "u1", "--json"],
    ],
)
def test_redis_down_is_one_line_and_a_non_zero_exit(args: list[str]) -> None:
    port = unused_port()  # nothing listens there
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": f"redis://admin:{PASSWORD}@127.0.0.1:{port}/0"}
    result = subprocess.run([RELAY, *args], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"relay {args[0]}: redis is not reachable at 127.0.0.1:{port}"]
    assert result.stdout == "" and PASSWORD not in result.stderr


def test_a_unix_socket_is_named_by_its_path(tmp_path: Path) -> None:
    socket = tmp_path / "no-redis.sock"
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": f"unix://{socket}"}
    result = subprocess.run([RELAY, "dlq", "list"], env=env, capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stderr.strip()) == (1, f"relay dlq: redis is not reachable at {socket}")


@pytest.mark.parametrize("args", [["dlq", "list"], ["trace", "u1"]])
def test_sentinels_are_named_as_configured(args: list[str]) -> None:
    ports = unused_port(), unused_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "REDIS_SENTINELS": f"127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}",
        "REDIS_SENTINEL_MASTER": "relay-master",
        "REDIS_SENTINEL_PASSWORD": "sentinel-pw-never-printed",
        "REDIS_URL": f"redis://admin:{PASSWORD}@ignored:6379/0",
    }
    result = subprocess.run([RELAY, *args], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"relay {args[0]}: redis is not reachable at sentinels 127.0.0.1:{ports[0]},127.0.0.1:{ports[1]} "
        "(master relay-master)"
    ]
    assert "never-printed" not in result.stderr
