"""`relay dev`, the README's first command: it starts, prints a curl that works, and the update
reaches the sandbox."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.integration.test_dev_logs import listeners
from tests.ports import unused_port

RELAY = str(Path(sys.executable).with_name("relay"))


def test_relay_dev_runs_the_printed_example_end_to_end(tmp_path: Path) -> None:
    port, metrics_port = unused_port(), unused_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "USERCOM_", "RELAY_", "STRIPE_"))}
    dev = subprocess.Popen(
        [RELAY, "dev", "--port", str(port), "--data-dir", str(tmp_path / "dev")],
        env={**env, "RELAY_METRICS_PORT": str(metrics_port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert dev.stdout is not None
        banner: list[str] = []
        for line in dev.stdout:
            banner.append(line)
            if line.startswith("Ctrl-C stops everything"):
                break
        text = "".join(banner)
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
