"""The `relay` console script as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import stripe

RELAY = str(Path(sys.executable).with_name("relay"))
GOOD = {
    "PATH": "/usr/bin:/bin",
    "REDIS_URL": "redis://:pw-not-shown@127.0.0.1:1/0",
    "STRIPE_WEBHOOK_SECRETS": "whsec_cli_test",
    "USERCOM_API_URL": "https://acme.user.com/api/public",
    "USERCOM_API_KEY": "usercom-key-not-shown",
}


def relay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RELAY, *args], env=GOOD if env is None else env, capture_output=True, text=True, timeout=30)


def test_check_config_summarizes_without_secrets() -> None:
    result = relay("check-config")
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout
    assert "invoice.paid" in result.stdout
    for secret in ("pw-not-shown", "whsec_cli_test", "usercom-key-not-shown"):
        assert secret not in result.stdout + result.stderr


@pytest.mark.parametrize("command", [["check-config"], ["web"], ["worker"]])
def test_bad_configuration_stops_with_one_line(command: list[str]) -> None:
    result = relay(*command, env={**GOOD, "STRIPE_TOLERANCE_SECONDS": "soon", "USERCOM_API_URL": "nope"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("relay: configuration error: ")


def test_web_only_needs_web_settings() -> None:
    env = {k: v for k, v in GOOD.items() if not k.startswith("USERCOM")}
    assert relay("check-config", "--role", "web", env=env).returncode == 0
    assert relay("check-config", "--role", "worker", env=env).returncode == 2


def test_sign_prints_a_header_stripe_accepts(tmp_path: Path) -> None:
    payload = tmp_path / "event.json"
    payload.write_text('{"id": "evt_1"}')
    result = relay("sign", "--secret", "whsec_cli_test", str(payload))
    assert result.returncode == 0
    header = result.stdout.strip()
    assert stripe.WebhookSignature.verify_header(payload.read_text(), header, "whsec_cli_test", tolerance=60)
