"""The `relay` console script as a user runs it."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks
import stripe
import urllib3
from redis import Redis

from service.cli import main
from tests.conftest import close_connections
from tests.ports import unused_port

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


SETTING_PREFIXES = ("RELAY_", "REDIS_", "STRIPE_", "PADDLE_", "LEMONSQUEEZY_", "USERCOM_", "USERKIT_", "STANDARD_")


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """`relay` run by main() in this process, for a command refused before it does anything (a one-line
    error): what a subprocess would print and exit with, without starting an interpreter each time."""

    def run(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
        for name in [name for name in os.environ if name.startswith(SETTING_PREFIXES)]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        try:
            code = main(list(args))
        except SystemExit as stopped:
            code = int(stopped.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_check_config_summarizes_without_secrets() -> None:
    result = relay("check-config")
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout
    assert "invoice.paid" in result.stdout
    for secret in ("pw-not-shown", "whsec_cli_test", "usercom-key-not-shown"):
        assert secret not in result.stdout + result.stderr


def test_commands_that_serve_no_metrics_write_no_metric_files(tmp_path: Path) -> None:
    """`kubectl exec ... relay check-config` (or dlq, trace) inherits the pod's PROMETHEUS_MULTIPROC_DIR:
    it must leave no file there among the live processes', and not fail where the directory is absent."""
    shared = tmp_path / "metrics"
    shared.mkdir()
    ran = relay("check-config", env={**GOOD, "PROMETHEUS_MULTIPROC_DIR": str(shared)})
    assert ran.returncode == 0, ran.stderr
    assert list(shared.iterdir()) == []
    absent = relay("check-config", env={**GOOD, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "absent")})
    assert absent.returncode == 0 and absent.stderr == "", absent.stderr
    assert not (tmp_path / "absent").exists()


def test_check_config_and_web_warn_of_a_mapped_event_type_that_looks_like_a_typo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mapping = tmp_path / "mapping.toml"
    mapping.write_text('[stripe."invoice.payed"]\nextract = "invoice"\ncustom = { paid_at = "last_payment_at" }\n')
    warning = (
        'relay: warning: the mapping names stripe event type "invoice.payed", not one of the Stripe event types this '
        'release knows (did you mean "invoice.paid"?); if it is a typo, those events are answered ignored'
    )
    checked = relay("check-config", env={**GOOD, "RELAY_MAPPING_FILE": str(mapping)})
    assert checked.returncode == 0 and checked.stderr.splitlines() == [warning], checked.stderr
    # relay web says so as it starts, in process up to the moment it becomes gunicorn
    env = {**GOOD, "RELAY_MAPPING_FILE": str(mapping), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    became: list[list[str]] = []
    monkeypatch.setattr(os, "execv", lambda path, argv: became.append(argv))
    assert main(["web", "--bind", f"127.0.0.1:{unused_port()}"]) == 0 and became
    assert capsys.readouterr().err.splitlines() == [warning]


def test_check_config_refuses_a_metrics_directory_web_and_worker_would_refuse(tmp_path: Path) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    (shared / "counter_12.db").write_bytes(b"")  # a live process's file is fine
    (shared / "notes.txt").write_text("mine")
    result = relay("check-config", env={**GOOD, "PROMETHEUS_MULTIPROC_DIR": str(shared)})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"relay: PROMETHEUS_MULTIPROC_DIR {shared} holds files that are not prometheus-client metric files "
        "(notes.txt); point it at an empty directory of its own"
    ]
    assert sorted(p.name for p in shared.iterdir()) == ["counter_12.db", "notes.txt"]  # nothing deleted


@pytest.mark.parametrize("command", [["check-config"], ["web"], ["worker"]])
def test_bad_configuration_stops_with_one_line(command: list[str], in_process: Any) -> None:
    code, _, err = in_process(*command, env={**GOOD, "STRIPE_TOLERANCE_SECONDS": "soon", "USERCOM_API_URL": "nope"})
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("relay: configuration error: ")


@pytest.mark.parametrize("command", [["check-config"], ["web"], ["worker"]])
def test_a_mapping_file_with_an_extract_that_is_not_a_name_stops_with_one_line(
    command: list[str], tmp_path: Path, in_process: Any
) -> None:
    """`extract = []` (a TOML list or table where a name belongs) is a typo, not a traceback."""
    mapping = tmp_path / "mapping.toml"
    mapping.write_text('[stripe."customer.created"]\nextract = []\ntags = ["t"]\n')
    code, _, err = in_process(*command, env={**GOOD, "RELAY_MAPPING_FILE": str(mapping)})
    assert code == 2, err
    assert err.splitlines() == [
        'relay: configuration error: RELAY_MAPPING_FILE: [stripe."customer.created"] extract must be one of '
        "['charge', 'checkout_session', 'customer', 'invoice', 'subscription']"
    ]


def test_check_config_warns_when_a_sentinel_failover_may_lose_answered_events() -> None:
    sentinel = {**GOOD, "REDIS_SENTINELS": "127.0.0.1:1,127.0.0.1:2", "REDIS_SENTINEL_MASTER": "relay"}
    for env, warned in ((GOOD, False), (sentinel, True), ({**sentinel, "RELAY_DURABLE_ACK": "replica"}, False)):
        result = relay("check-config", env=env)
        assert result.returncode == 0, result.stderr
        line = next(line for line in result.stdout.splitlines() if "durable ack:" in line)
        assert ("set RELAY_DURABLE_ACK=replica" in line) is warned, line


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


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REDIS_URL", "redis://:pw-not-shown@[::1:6379/0"),
        ("USERCOM_API_URL", "https://[::1/api/public"),
        ("STRIPE_API_BASE", "https://admin:pw-not-shown@[fe80::1"),
        ("PADDLE_API_BASE", "http://[::1"),
    ],
)
def test_a_url_setting_with_an_unbalanced_bracket_stops_with_one_line(name: str, value: str, in_process: Any) -> None:
    code, out, err = in_process("check-config", env={**GOOD, name: value})
    assert code == 2, err
    assert err.splitlines() == [
        f"relay: configuration error: {name} is not a usable {'Redis URL' if name == 'REDIS_URL' else 'URL'}: "
        "its host cannot be read (an IPv6 address goes in [ ], e.g. [::1])"
    ]
    assert "pw-not-shown" not in out + err


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--secret", "whsec_cli_test", "missing.json"],
            "relay sign: cannot read missing.json: No such file or directory",
        ),
        (["--secret", "whsec_cli_test", "."], "relay sign: cannot read .: Is a directory"),
        (["--secret", "sk_live_pasted", "event.json"], "relay sign: --secret is not usable: a Stripe signing secret"),
        (["--source", "standard", "--secret", "sk_live_pasted", "event.json"], "relay sign: --secret is not usable: "),
        (
            ["--source", "standard", "--secret", "whsec_not*base64", "event.json"],
            "relay sign: --secret is not usable: ",
        ),
        (["--secret", "whsec_\udcff", "event.json"], "relay sign: --secret is not valid UTF-8"),  # byte 0xff
    ],
)
def test_sign_with_a_file_or_secret_it_cannot_use_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], line: str, in_process: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "event.json").write_text('{"id": "evt_1"}')
    monkeypatch.chdir(tmp_path)
    code, out, err = in_process("sign", *args, env=GOOD)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1 and err.startswith(line), err
    assert args[args.index("--secret") + 1] not in err  # never echoed


def test_sign_standard_gives_each_payload_its_own_webhook_id(tmp_path: Path) -> None:
    """The webhook-id is the event id: signed alike, every payload after the first was a duplicate."""
    secret = "whsec_" + base64.b64encode(b"relay-cli-test-secret-32-bytes!!").decode()
    (tmp_path / "event.json").write_text('{"type": "user.updated", "timestamp": "2026-11-29T00:00:00Z", "data": {}}')
    signed = []
    for _ in range(2):
        result = subprocess.run(
            [RELAY, "sign", "--source", "standard", "--secret", secret, "event.json"],
            cwd=tmp_path,
            env=GOOD,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        headers = dict(line.split(": ", 1) for line in result.stdout.splitlines())
        standardwebhooks.Webhook(secret).verify((tmp_path / "event.json").read_text(), headers)  # raises if not
        signed.append(headers["webhook-id"])
    assert signed[0] != signed[1]


def test_worker_supervisor_runs_both_lanes_and_stops_on_sigterm(redis_server: Any, tmp_path: Path) -> None:
    """Its workers are forks of it (its imports are not made again); with PROMETHEUS_MULTIPROC_DIR unset
    it picks a directory of its own for their metrics, removed when it stops."""
    env = {**GOOD, "REDIS_URL": redis_server.url, "RELAY_METRICS_PORT": str(unused_port()), "TMPDIR": str(tmp_path)}
    process = subprocess.Popen([RELAY, "worker", "--concurrency", "2"], env=env, stderr=subprocess.DEVNULL)
    client = Redis.from_url(redis_server.url)
    deadline = time.monotonic() + 20
    while client.scard("rq:workers:relay-delivery") < 2 or client.scard("rq:workers:relay-replay") < 1:
        assert time.monotonic() < deadline, "workers did not register"
        time.sleep(0.1)
    workers = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    assert len(workers) == 4  # two live workers, one replay and one backfill worker
    supervisor_argv = Path(f"/proc/{process.pid}/cmdline").read_bytes()
    assert {Path(f"/proc/{pid}/cmdline").read_bytes() for pid in workers} == {supervisor_argv}  # forked, not started
    [metrics_dir] = tmp_path.glob("relay-worker-metrics-*")  # PROMETHEUS_MULTIPROC_DIR unset: one of its own
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert client.scard("rq:workers:relay-delivery") == 0 and client.scard("rq:workers:relay-replay") == 0
    assert not metrics_dir.exists()
    client.close()


def test_relay_web_removes_the_metrics_directory_it_made_when_it_stops(redis_server: Any, tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR unset it makes one of its own, then becomes gunicorn (exec): gunicorn
    removes it at exit. A configured one stays, with its files."""
    port = unused_port()
    env = {**GOOD, "REDIS_URL": redis_server.url, "TMPDIR": str(tmp_path)}
    configured = tmp_path / "configured"
    http = urllib3.PoolManager(retries=False, timeout=1)
    for run_env in (env, {**env, "PROMETHEUS_MULTIPROC_DIR": str(configured)}):
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        process = subprocess.Popen([RELAY, "web", "--bind", f"127.0.0.1:{port}"], env=run_env, **quiet)
        try:
            deadline = time.monotonic() + 30
            while not answers(http, f"http://127.0.0.1:{port}/healthz"):
                assert process.poll() is None and time.monotonic() < deadline, "relay web did not start"
                time.sleep(0.1)
            made = list(tmp_path.glob("relay-web-metrics-*"))
            assert len(made) == (0 if "PROMETHEUS_MULTIPROC_DIR" in run_env else 1)
            close_connections(http)  # else gunicorn's graceful stop waits out their keep-alive
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=40) == 0
        finally:
            process.kill()
        assert not any(directory.exists() for directory in made)
    assert list(configured.iterdir())  # the configured directory and its files stay


def answers(http: urllib3.PoolManager, url: str) -> bool:
    try:
        return http.request("GET", url).status == 200
    except urllib3.exceptions.HTTPError:
        return False


def test_a_worker_supervisor_stopped_while_it_forks_stops_as_asked(redis_server: Any, tmp_path: Path) -> None:
    """SIGTERM as soon as its first worker exists (it forks the others and starts its metrics server within
    milliseconds, and a forked worker needs no imports: it may be registered by then): exit 0, no process
    left, nothing said, never the default action's death by signal."""
    env = {**GOOD, "REDIS_URL": redis_server.url, "RELAY_METRICS_PORT": str(unused_port()), "TMPDIR": str(tmp_path)}
    process = subprocess.Popen([RELAY, "worker"], env=env, stderr=subprocess.PIPE, text=True)
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    deadline = time.monotonic() + 20
    while not (children.exists() and children.read_text().split()):
        assert process.poll() is None and time.monotonic() < deadline, "no worker was forked"
    forked = children.read_text().split()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert not [pid for pid in forked if Path(f"/proc/{pid}").exists()]
    assert "Traceback" not in stderr


def test_worker_supervisor_exits_non_zero_when_a_worker_dies(redis_server: Any) -> None:
    env = {**GOOD, "REDIS_URL": redis_server.url, "RELAY_METRICS_PORT": str(unused_port())}
    process = subprocess.Popen([RELAY, "worker"], env=env, stderr=subprocess.PIPE, text=True)
    client = Redis.from_url(redis_server.url)
    deadline = time.monotonic() + 20
    while client.scard("rq:workers:relay-replay") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    pid = int(
        client.hget(
            f"rq:worker:{next(iter(client.smembers('rq:workers:relay-replay'))).decode().split(':')[-1]}", "pid"
        )
    )
    os.kill(pid, signal.SIGKILL)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1
    assert "exited unexpectedly" in stderr
    client.close()


def test_worker_supervisor_exits_non_zero_when_every_worker_dies_at_once(redis_server: Any) -> None:
    """A Kubernetes Job (`relay worker --burst`) whose workers all crashed must not be marked done."""
    env = {**GOOD, "REDIS_URL": redis_server.url, "RELAY_METRICS_PORT": str(unused_port())}
    client = Redis.from_url(redis_server.url)
    client.flushdb()  # no worker registered by an earlier test
    process = subprocess.Popen([RELAY, "worker", "--concurrency", "1"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while client.scard("rq:workers") < 3:  # the live, replay and backfill lanes' workers, registered
        assert time.monotonic() < deadline
        time.sleep(0.1)
    pids = [int(client.hget(key, "pid")) for key in client.smembers("rq:workers")]
    os.kill(process.pid, signal.SIGSTOP)  # the supervisor sees them all dead in one look
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    os.kill(process.pid, signal.SIGCONT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1, stderr
    assert "exited unexpectedly" in stderr
    client.close()
