"""`relay dev`, the README's first command: it starts, prints a curl that works, and the update
reaches the sandbox."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import RedisError

from service.cli.connect import address_in_use
from tests.integration.test_dev_logs import listeners
from tests.ports import unused_port

RELAY = str(Path(sys.executable).with_name("relay"))


def clean_env(**more: str) -> dict[str, str]:
    """This environment without the relay's own settings (relay dev chooses them), and `more`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "USERCOM_", "RELAY_", "STRIPE_"))}
    return {**env, **more}


def start_dev(port: int, data_dir: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """`relay dev` in a session of its own, and its banner once printed (it is running then)."""
    dev = subprocess.Popen(
        [RELAY, "dev", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    banner = ""
    assert dev.stdout is not None
    for line in dev.stdout:
        banner += line
        if line.startswith("Ctrl-C stops everything"):
            break
    return dev, banner


def test_relay_dev_runs_the_printed_example_end_to_end(tmp_path: Path) -> None:
    port, metrics_port = unused_port(), unused_port()
    env = clean_env()
    dev, text = start_dev(port, tmp_path / "dev", {**env, "RELAY_METRICS_PORT": str(metrics_port)})
    try:
        assert "relay dev is running" in text, text
        curl = re.search(r"(curl -sS http://127\.0\.0\.1:\d+/webhooks/stripe .*?--data-binary @\S+)", text, re.S)
        assert curl is not None, text
        answer = subprocess.run(["bash", "-c", curl.group(1)], capture_output=True, text=True, timeout=30, check=True)
        assert json.loads(answer.stdout)["status"] == "accepted", answer.stdout
        exports = re.search(
            r"export (REDIS_URL=\S+) (RELAY_ADMIN_TOKEN=\S+) \\\n\s+(USERCOM_API_URL=\S+) (USERCOM_API_KEY=\S+)", text
        )
        assert exports is not None, text
        shell_env = {**env, **dict(pair.split("=", 1) for pair in exports.groups())}
        listing = subprocess.run(
            [RELAY, "dlq", "list", "--json"], env=shell_env, capture_output=True, text=True, timeout=30
        )
        assert listing.returncode == 0 and json.loads(listing.stdout)["total"] == 0, listing.stderr
        assert f"http://127.0.0.1:{port}/console" in text
        users_url = re.search(r"curl -sS (http://127\.0\.0\.1:\d+/__sandbox__/users)", text)
        assert users_url is not None, text
        deadline = time.monotonic() + 60
        while True:
            with urllib.request.urlopen(users_url.group(1), timeout=5) as response:  # noqa: S310 - loopback
                users = json.loads(response.read())
            if any(u.get("user_id") == "dev-user-1" for u in users["users"]):
                break
            assert time.monotonic() < deadline, f"the sample update never reached the sandbox: {users}"
            time.sleep(0.2)
        with urllib.request.urlopen(users_url.group(1).removesuffix("/__sandbox__/users"), timeout=5) as response:  # noqa: S310
            listed = json.loads(response.read())["control"]["GET /__sandbox__/requests"]
        assert listed.startswith("the newest 10000 calls")  # a long session's memory stays bounded
        while not listeners(metrics_port):  # the worker's metrics: on loopback only
            assert time.monotonic() < deadline, "the worker metrics never listened"
            time.sleep(0.2)
        assert listeners(metrics_port) == {"0100007F"}
        busy = subprocess.run([RELAY, "dev", "--port", str(port)], env=env, capture_output=True, text=True, timeout=30)
        assert (
            busy.returncode == 2
            and busy.stderr.strip() == f"relay dev: port {port} is in use; choose another with --port"
        )
    finally:
        os.killpg(dev.pid, signal.SIGINT)
        try:
            dev.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait()
        if dev.stdout is not None:
            dev.stdout.close()


def carrying(marker: str) -> list[int]:
    """Live processes whose environment holds `marker` (a zombie's reads as empty)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:  # gone meanwhile, or not ours
                continue
            if marker.encode() in environ.split(b"\0"):
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGHUP], ids=["kill -9", "terminal closed"])
def test_relay_dev_stopped_any_way_leaves_nothing_running(tmp_path: Path, signum: int) -> None:
    """Its Redis, web and worker run in sessions of their own (Ctrl-C reaches relay dev alone): killed,
    or its terminal closed, they were left running and holding their ports. A second relay dev on the
    same data dir is refused meanwhile (two Redis servers on one append-only file)."""
    marker = f"RELAY_DEV_TEST_MARK={uuid.uuid4().hex}"
    port = unused_port()
    name, value = marker.split("=")
    env = clean_env(RELAY_METRICS_PORT=str(unused_port()), **{name: value})
    data_dir = tmp_path / "dev"
    redis_url = None
    dev, banner = start_dev(port, data_dir, env)
    try:
        redis_url = re.search(r"export REDIS_URL=(\S+)", banner)
        assert redis_url is not None, banner
        assert len(carrying(marker)) >= 3  # relay dev, web, worker and their children (Redis rewrites its environ)
        second = subprocess.run(
            [RELAY, "dev", "--port", str(unused_port()), "--data-dir", str(data_dir)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert (second.returncode, second.stderr.strip()) == (
            2,
            f"relay dev: another relay dev is running on {data_dir}; stop it or choose another --data-dir",
        )
        os.kill(dev.pid, signum)
        dev.wait(timeout=60)
        deadline = time.monotonic() + 60
        redis_port = int(redis_url.group(1).rsplit(":", 1)[1].split("/")[0])
        while carrying(marker) or listeners(redis_port):
            assert time.monotonic() < deadline, f"left running: {carrying(marker)}, Redis {listeners(redis_port)}"
            time.sleep(0.2)
        assert not listeners(port)
    finally:
        for pid in carrying(marker):
            os.kill(pid, signal.SIGKILL)
        if redis_url is not None:
            with contextlib.suppress(RedisError), Redis.from_url(redis_url.group(1)) as redis:
                redis.shutdown(nosave=True)
        if dev.poll() is None:
            dev.kill()
            dev.wait()
        if dev.stdout is not None:
            dev.stdout.close()


def test_a_port_its_last_run_left_in_time_wait_is_free() -> None:
    """Restarted just after Ctrl-C, relay dev found its port "in use" while only TIME-WAIT remained."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            served, _ = listener.accept()
            served.close()  # the server closes first: its side of the connection waits in TIME-WAIT
            client.recv(1)
    assert not address_in_use("127.0.0.1", port)
    with socket.create_server(("127.0.0.1", port)):  # a listener is still found
        assert address_in_use("127.0.0.1", port)


def test_a_sandbox_left_in_the_shell_by_an_earlier_export_is_named(tmp_path: Path) -> None:
    """After `export USERCOM_API_URL=...` from a banner, a later relay dev used the dead sandbox's address
    as "your User.com account": every update failed to connect."""
    gone = f"http://127.0.0.1:{unused_port()}/api/public"
    env = clean_env(USERCOM_API_URL=gone, USERCOM_API_KEY="from-an-earlier-run")
    argv = [RELAY, "dev", "--port", str(unused_port()), "--data-dir", str(tmp_path / "dev")]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stderr.strip()) == (
        2,
        f"relay dev: USERCOM_API_URL {gone} answers nothing (the export line of an earlier relay dev?): "
        "unset USERCOM_API_URL USERCOM_API_KEY to run with a sandbox",
    )
    assert not (tmp_path / "dev" / "redis").exists()  # refused before anything started


def test_a_url_without_its_key_is_no_account_and_not_refused(tmp_path: Path) -> None:
    """A sandbox runs unless both USERCOM_API_URL and USERCOM_API_KEY are set: the URL alone is no reason
    to refuse. Sentinels the shell names are not relay dev's Redis either: it runs its own (and never
    prints their password), and an admin token of your own is used, not printed."""
    gone = f"http://127.0.0.1:{unused_port()}/api/public"
    port = unused_port()
    sentinels = {
        "REDIS_SENTINELS": f"127.0.0.1:{unused_port()}",
        "REDIS_SENTINEL_MASTER": "prod",
        "REDIS_SENTINEL_PASSWORD": "SentinelPw12345",
    }
    own = {"RELAY_ADMIN_TOKEN": "my-own-admin-token-1234"}  # used, and not printed either
    env = clean_env(USERCOM_API_URL=gone, RELAY_METRICS_PORT=str(unused_port()), **sentinels, **own)
    dev, banner = start_dev(port, tmp_path / "dev", env)
    try:
        assert "relay dev is running" in banner and "/__sandbox__/users" in banner
        assert "export REDIS_URL=redis://127.0.0.1:" in banner and "SentinelPw12345" not in banner
        assert "my-own-admin-token-1234" not in banner and "admin token              yours" in banner
    finally:
        os.killpg(dev.pid, signal.SIGINT)
        dev.wait(timeout=60)
        if dev.stdout is not None:
            dev.stdout.close()


@pytest.mark.parametrize(
    ("env", "argv", "says"),
    [
        ({}, ["--data-dir", "{file}"], "relay dev: cannot use --data-dir {file}: File exists"),
        ({"USERCOM_API_URL": "http://[::1", "USERCOM_API_KEY": "k"}, [], "USERCOM_API_URL is not a usable URL"),
    ],
)
def test_what_relay_dev_cannot_use_is_one_line(tmp_path: Path, env: dict[str, str], argv: list[str], says: str) -> None:
    file = tmp_path / "a-file"
    file.write_text("")
    argv = [a.format(file=file) for a in argv] or ["--data-dir", str(tmp_path / "dev")]
    result = subprocess.run(
        [RELAY, "dev", "--port", str(unused_port()), *argv], env=clean_env(**env), capture_output=True, text=True
    )
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert says.format(file=file) in result.stderr


@pytest.mark.parametrize("when", ["running", "starting"])
def test_relay_dev_whose_terminal_closed_stops_as_ctrl_c_does(tmp_path: Path, when: str) -> None:
    """Its terminal gone, every write fails (EIO): the line that opens the stop raised, and the rest of it
    (web and worker stopped before Redis) never ran; closed while starting, it printed its banner (EIO)."""
    leader, follower = pty.openpty()
    data_dir = tmp_path / "dev"
    dev = subprocess.Popen(
        [RELAY, "dev", "--port", str(unused_port()), "--data-dir", str(data_dir)],
        env=clean_env(RELAY_METRICS_PORT=str(unused_port())),
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        start_new_session=True,
    )
    os.close(follower)
    try:
        if when == "starting":  # its Redis is up: web and worker are starting
            deadline = time.monotonic() + 60
            while not (data_dir / "redis" / "redis.log").exists():
                assert time.monotonic() < deadline and dev.poll() is None, "relay dev never started its Redis"
                time.sleep(0.05)
        seen = b""
        while when == "running" and b"Ctrl-C stops everything" not in seen:
            chunk = os.read(leader, 65536)
            assert chunk, seen.decode(errors="replace")
            seen += chunk
    finally:
        os.close(leader)  # the terminal is gone
        dev.send_signal(signal.SIGHUP)
        try:
            code = dev.wait(timeout=60)
        finally:
            if dev.poll() is None:
                os.killpg(dev.pid, signal.SIGKILL)
    assert code == 0  # stopped as Ctrl-C stops it, not with a traceback
