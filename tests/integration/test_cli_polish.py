"""CLI and API polish: ids never cut, --version, help on every option, `dlq show --json`,
bulk replay only with an explicit filter or `all`, and `GET /` listing where to go."""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from service import create_app
from service.cli import build_parser, main
from service.config import Settings
from service.core.dead_letter import DeadLetter
from service.core.update import UserUpdate
from service.ops.status import version
from service.store import keys
from service.store.ledger import Store

RELAY = str(Path(sys.executable).with_name("relay"))
TOKEN = "polish-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LONG_ID = "stripe-evt_" + "1234567890" * 6


def dead_letter(store: Store, redis: Redis, event_id: str) -> None:
    update = UserUpdate(
        source="stripe",
        event_id=event_id,
        event_type="invoice.paid",
        event_time=1,
        user_id="u1",
        customer_id=None,
        custom={"plan": "pro"},
    )
    assert store.accept(update)
    redis.delete(keys.USERCOM.rq_queue_key(keys.LIVE))
    item = DeadLetter(
        id=f"stripe-{event_id}",
        reason="usercom_rejected",
        source="stripe",
        event_type="invoice.paid",
        event_id=event_id,
        event_time=1,
        message="no",
        update=update.to_dict(),
        user_id="u1",
    )
    store.dead_letter(item)


def relay(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": settings.redis_url}
    return subprocess.run([RELAY, *args], env=env, capture_output=True, text=True, timeout=30)


def test_dlq_list_never_cuts_an_id(settings: Settings, redis: Redis) -> None:
    dead_letter(Store.from_settings(redis, settings), redis, LONG_ID.removeprefix("stripe-"))
    lines = relay(settings, "dlq", "list").stdout.splitlines()
    assert lines[1].split()[0] == LONG_ID


def test_dlq_show_json_is_one_line_and_default_is_indented(settings: Settings, redis: Redis) -> None:
    dead_letter(Store.from_settings(redis, settings), redis, "evt_1")
    compact = relay(settings, "dlq", "show", "stripe-evt_1", "--json").stdout
    pretty = relay(settings, "dlq", "show", "stripe-evt_1").stdout
    assert len(compact.strip().splitlines()) == 1 and len(pretty.splitlines()) > 5
    assert json.loads(compact) == json.loads(pretty)


def test_version() -> None:
    result = subprocess.run([RELAY, "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.strip() == f"relay {version()}"


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += _parsers(child)
    return found


def test_every_option_has_help() -> None:
    missing = [
        f"{parser.prog} {action.dest}"
        for parser in _parsers(build_parser())
        for action in parser._actions
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help
    ]
    assert missing == []


def test_bulk_replay_needs_a_filter_or_all(env: dict[str, str], redis: Redis) -> None:
    settings = Settings.from_env({**env, "RELAY_ADMIN_TOKEN": TOKEN})
    dead_letter(Store.from_settings(redis, settings), redis, "evt_1")
    admin = create_app(settings).test_client()
    for body in (None, {}, {"dry_run": True}, {"all": False}):
        answer = admin.post("/admin/dlq/replay", json=body, headers=AUTH)
        assert answer.status_code == 400 and answer.get_json()["error"]["code"] == "invalid_request", body
    assert redis.llen(keys.USERCOM.rq_queue_key(keys.REPLAY)) == 0
    dry = admin.post("/admin/dlq/replay", json={"all": True, "dry_run": True}, headers=AUTH)
    assert dry.status_code == 200 and dry.get_json()["matched"] == 1
    assert admin.post("/admin/dlq/replay", json={"all": True}, headers=AUTH).status_code == 202
    # The CLI insists on --all too.
    assert relay(settings, "dlq", "replay").returncode == 2


def test_root_lists_where_to_go(client: Any) -> None:
    links = client.get("/").get_json()["links"]
    assert links == {"console": "/console", "status": "/status", "metrics": "/metrics", "openapi": "/openapi.json"}


BIND = "HOST:PORT (port 0-65535) or unix:PATH"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dev", "--port", "70000"], "argument --port: must be 1-65535"),
        (["dev", "--port", "0"], "argument --port: must be 1-65535"),  # was: 30 s of waiting for port 0
        (["worker", "--concurrency", "abc"], "argument --concurrency: 'abc' is not a whole number"),
        (["worker", "--concurrency", "0"], "argument --concurrency: must be 1-64"),
        (["worker", "--concurrency", "99999999999999999999"], "argument --concurrency: must be 1-64"),
        (
            ["web", "--bind", "127.0.0.1:99999"],
            "argument --bind: '127.0.0.1:99999' is not HOST:PORT (port 0-65535) or unix:PATH",
        ),
        (["web", "--bind", "\udcff:1"], "argument --bind: '\\udcff:1' is not HOST:PORT (port 0-65535) or unix:PATH"),
        (["web", "--bind", "8000"], "argument --bind: '8000' is not HOST:PORT (port 0-65535) or unix:PATH"),
    ],
)
def test_a_number_argument_out_of_range_is_named_in_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(args)
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"relay {args[0]}: error: {message}"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["dlq", "show", "\udcff"], "relay dlq show: id is not valid UTF-8"),
        (["trace", "u\udcff"], "relay trace: user-id is not valid UTF-8"),
        (["dlq", "list", "--user", "\udcff"], "relay dlq list: --user is not valid UTF-8"),
    ],
)
def test_an_argument_that_is_not_utf8_is_one_line(args: list[str], line: str) -> None:
    """Bytes that are not UTF-8 (here 0xff, as Python reads them) made a traceback where they became a key."""
    result = subprocess.run([RELAY, *args], env={"PATH": "/usr/bin:/bin", "REDIS_URL": "redis://127.0.0.1:1/0"},
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert (result.returncode, result.stderr.strip()) == (2, line)


def test_ctrl_c_while_a_command_waits_is_one_line_not_a_traceback() -> None:
    """`relay dlq list` waiting on a Redis that does not answer, Ctrl-C'd (a backfill's second Ctrl-C
    ends the same way)."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never answers
        env = {"PATH": "/usr/bin:/bin", "REDIS_URL": f"redis://127.0.0.1:{silent.getsockname()[1]}/0"}
        with subprocess.Popen([RELAY, "dlq", "list"], env=env, stderr=subprocess.PIPE, text=True) as run:
            try:
                silent.settimeout(30)
                connection = silent.accept()[0]  # it has connected: it waits for an answer now
                run.send_signal(signal.SIGINT)
                _, err = run.communicate(timeout=30)
                connection.close()
            finally:
                run.kill()
    assert (run.returncode, err.strip()) == (130, "relay dlq: stopped (Ctrl-C)")


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (["backfill", "stripe", "--since", "7d", "--bogus"], "relay backfill"),
        (["dlq", "list", "--nope"], "relay dlq list"),
    ],
)
def test_an_unknown_option_is_refused_with_its_commands_usage(
    args: list[str], command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """It printed relay's own usage, which lists no option of the command."""
    with pytest.raises(SystemExit) as exited:
        main(args)
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert (
        err.startswith(f"usage: {command} ")
        and err.splitlines()[-1] == f"{command}: error: unrecognized arguments: {args[-1]}"
    )
