"""What `relay dev` shows on a terminal: readable log lines (JSON when stderr is not a terminal,
without rq's colour codes), and worker metrics on loopback only."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.ports import unused_port

RELAY = str(Path(sys.executable).with_name("relay"))
DEADLINE = 120.0  # generous: the machine may be loaded


def read_all(fd: int) -> str:
    """Everything written to a pty until its last writer closes it."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError as exc:  # EIO: every writer is gone
            if exc.errno != errno.EIO:
                raise
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def burst_worker(env: dict[str, str], *, stderr_terminal: bool, level: str = "INFO") -> tuple[str, str]:
    """`relay worker --lane live --burst` with stdout on a terminal (so rq colours its messages)."""
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            [RELAY, "worker", "--lane", "live", "--burst"],
            env={**env, "RELAY_LOG_LEVEL": level},
            stdin=subprocess.DEVNULL,
            stdout=follower,
            stderr=follower if stderr_terminal else subprocess.PIPE,
        )
        os.close(follower)
        terminal = read_all(leader)
        _, stderr = process.communicate(timeout=DEADLINE)
        assert process.returncode == 0, (terminal, stderr)
    finally:
        with contextlib.suppress(OSError):
            os.close(follower)
        os.close(leader)
    return terminal, (stderr or b"").decode()


def test_logs_are_json_without_colour_codes_when_stderr_is_not_a_terminal(env: dict[str, str]) -> None:
    _, stderr = burst_worker(env, stderr_terminal=False)
    entries = [json.loads(line) for line in stderr.splitlines()]
    listening = [e for e in entries if "Listening on" in e["msg"]]
    assert listening and listening[0]["msg"] == "*** Listening on relay-delivery..."  # no escape codes around it
    assert "\\u001b" not in stderr and "\x1b" not in stderr


def test_rq_registry_cleaning_is_logged_at_debug_only(env: dict[str, str]) -> None:
    """rq logs it at INFO every maintenance interval, per worker: an idle relay dev printed ~300 lines in
    8 minutes. Its start and stop lines stay at INFO."""
    for level, shown in (("INFO", False), ("DEBUG", True)):
        _, stderr = burst_worker(env, stderr_terminal=False, level=level)
        messages = [json.loads(line)["msg"] for line in stderr.splitlines()]
        assert any("started with PID" in m for m in messages), stderr
        assert any("cleaning registries" in m for m in messages) is shown, (level, messages)


def test_logs_are_readable_lines_on_a_terminal(env: dict[str, str]) -> None:
    terminal, _ = burst_worker(env, stderr_terminal=True)
    lines = [line for line in terminal.splitlines() if line.strip()]
    assert lines and not any(line.startswith("{") for line in lines), terminal
    assert any(" INFO  rq.worker  " in line and "Listening on relay-delivery..." in line for line in lines), terminal
    assert "\x1b" not in terminal


def listeners(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp) listening on the port."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            for row in list(rows)[1:]:
                local, state = row.split()[1], row.split()[3]
                address, _, hex_port = local.partition(":")
                if state == "0A" and int(hex_port, 16) == port:
                    found.add(address)
    return found


def test_worker_metrics_listen_where_relay_metrics_bind_says(env: dict[str, str]) -> None:
    port = unused_port()
    worker = subprocess.Popen(
        [RELAY, "worker"],
        env={**env, "RELAY_METRICS_PORT": str(port), "RELAY_METRICS_BIND": "127.0.0.1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + DEADLINE
        while not listeners(port):
            assert worker.poll() is None and time.monotonic() < deadline, "the metrics never listened"
            time.sleep(0.1)
        assert listeners(port) == {"0100007F"}  # 127.0.0.1 only
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


def test_a_metrics_address_that_cannot_be_bound_stops_with_one_line(env: dict[str, str]) -> None:
    port = unused_port()
    bad = {**env, "RELAY_METRICS_PORT": str(port), "RELAY_METRICS_BIND": "192.0.2.1"}  # TEST-NET: not ours
    result = subprocess.run([RELAY, "worker"], env=bad, capture_output=True, text=True, timeout=DEADLINE)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"relay worker: cannot serve metrics on 192.0.2.1:{port} (RELAY_METRICS_BIND): ")
