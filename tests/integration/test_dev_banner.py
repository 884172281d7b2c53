"""`relay dev`'s banner with a Stripe secret of your own: the secret is not printed, and the printed
sign command, run in a shell that has STRIPE_WEBHOOK_SECRETS, signs with its first secret."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import stripe

from service.cli.dev import DEV_STRIPE_SECRET, _print_banner
from service.config import Settings
from tests.conftest import OLD_SECRET, SECRET


def test_an_own_secret_is_read_by_the_shell_not_printed(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings.from_env({**env, "RELAY_ADMIN_TOKEN": "banner-admin-token"})
    assert settings.source_secrets("stripe") == (SECRET, OLD_SECRET) and SECRET != DEV_STRIPE_SECRET
    _print_banner(8000, settings, tmp_path, None, own_token=True)
    banner = capsys.readouterr().out
    assert SECRET not in banner and OLD_SECRET not in banner
    assert "banner-admin-token" not in banner  # your own token: the shell reads it
    assert "admin token              yours, $RELAY_ADMIN_TOKEN\n" in banner
    assert 'curl -H "Authorization: Bearer $RELAY_ADMIN_TOKEN"' in banner
    sign = re.search(r'"Stripe-Signature: \$\((.+?)\)"', banner)
    assert sign is not None, banner
    shell = {"PATH": "/usr/bin:/bin", "STRIPE_WEBHOOK_SECRETS": f"{SECRET},{OLD_SECRET}"}
    header = subprocess.run(["bash", "-c", sign.group(1)], env=shell, capture_output=True, text=True, check=True).stdout
    payload = (tmp_path / "sample-event.json").read_text()
    stripe.WebhookSignature.verify_header(payload, header.strip(), SECRET)  # raises if not signed with it


def test_the_token_relay_dev_made_is_printed(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings.from_env({**env, "RELAY_ADMIN_TOKEN": "made-by-relay-dev"})
    _print_banner(8000, settings, tmp_path, None, own_token=False)
    banner = capsys.readouterr().out
    assert "admin token              made-by-relay-dev\n" in banner
    assert "RELAY_ADMIN_TOKEN=made-by-relay-dev" in banner
