"""The deploy's Redis ACL (deploy/redis/users.acl) is enough for the whole relay and no more: a real
redis-server loads that file (password substituted), `relay web` and `relay worker` log in as
`relay`, and accept -> delivery -> dead letter -> replay -> /status and /metrics run with no command
denied (ACL LOG stays empty) while administrative commands are refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import NoPermissionError
from redis.retry import Retry

from service.config import Settings
from service.devtools.usercom_sandbox import Fault, SandboxServer
from service.store.ledger import Store
from tests.conftest import SECRET, USERCOM_KEY, close_connections, sign, stripe_event
from tests.integration.redis_launch import start_redis, start_relay, stop_relay, wait_until

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "relay-acl-test-password-0123456789"
ADMIN_TOKEN = "acl-test-admin-token"


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[tuple[int, Redis]]:
    template = (REPO / "deploy" / "redis" / "users.acl").read_text()
    assert "<relay-redis-password>" in template
    # The test inspects the server as an admin user of its own; the relay never uses it.
    acl = template.replace("<relay-redis-password>", PASSWORD) + "user admin on >admin-pw ~* &* +@all\n"
    (tmp_path / "users.acl").write_text(acl)
    server, admin = start_redis(
        tmp_path / "redis", "--aclfile", str(tmp_path / "users.acl"), username="admin", password="admin-pw"
    )
    yield server.port, admin
    admin.close()
    server.stop()


def test_the_relay_runs_on_the_deploy_acl_with_nothing_denied(
    tmp_path: Path, acl_redis: tuple[int, Redis], sandbox: SandboxServer
) -> None:
    port, admin = acl_redis
    url = f"redis://relay:{PASSWORD}@127.0.0.1:{port}/0"
    env = {
        "REDIS_URL": url,
        "STRIPE_WEBHOOK_SECRETS": SECRET,
        "USERCOM_API_URL": sandbox.base_url,
        "USERCOM_API_KEY": USERCOM_KEY,
        "USERCOM_RATE_LIMIT": "1000",
        "USERCOM_BURST": "100",
        "RELAY_ADMIN_TOKEN": ADMIN_TOKEN,
    }
    base, processes = start_relay(tmp_path, env, "web", "worker")
    http = urllib3.PoolManager(retries=False, timeout=10)
    store = Store.from_settings(admin, Settings.from_env(env))

    def post(event_id: str, user_id: str) -> Any:
        customer = {"id": "cus_" + user_id.replace("-", ""), "email": "a@example.com", "metadata": {"user_id": user_id}}
        body = json.dumps(stripe_event("customer.created", customer, event_id=event_id)).encode()
        headers = {"Content-Type": "application/json", "Stripe-Signature": sign(body)}
        return http.request("POST", f"{base}/webhooks/stripe", body=body, headers=headers)

    try:
        sandbox.state.faults.append(Fault(400))  # the first call is refused: dead-lettered
        first = post("evt_acl_1", "u-acl-1")
        assert first.status == 202, first.data
        wait_until(lambda: store.ledger()["dead_lettered"] == 1, 60, "a dead letter")
        assert post("evt_acl_2", "u-acl-2").status == 202
        wait_until(lambda: store.ledger()["delivered"] == 1, 60, "a delivery")
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
        body = b'{"all": true, "batch": 500}'  # the console's, in batches: the one kept set of the web's
        replay = http.request("POST", f"{base}/admin/dlq/replay", body=body, headers=auth)
        assert replay.status == 202, replay.data
        ledger = wait_until(
            lambda: (ledger := store.ledger())["delivered"] == 2 and ledger["in_flight"] == 0 and ledger, 60, "replay"
        )
        assert ledger["received"] == 2 and ledger["replayed"] == 1
        status = http.request("GET", f"{base}/status")
        assert status.status == 200, status.data
        metrics = http.request("GET", f"{base}/metrics").data.decode()
        assert "relay_redis_up 1.0" in metrics
        assert "relay_redis_memory_used_bytes" in metrics and "relay_redis_memory_max_bytes" in metrics
        listed = http.request("GET", f"{base}/admin/dlq", headers=auth)
        assert listed.status == 200, listed.data
    finally:
        close_connections(http)  # else the web's stop waits out each kept-alive connection
        stop_relay(processes)
        # What the ACL lacks, reported first. One exception: rq rebuilds its scheduler's connection
        # without the relay's options, and redis-py then offers CLIENT MAINT_NOTIFICATIONS on connect
        # (a Redis 8 command, ignored when refused); the ACL cannot name it for Redis 7.4.
        log = admin.execute_command("ACL", "LOG")
        denied = [(e[b"object"], e[b"client-info"]) for e in log if e[b"object"] != b"client"]
        assert denied == [], denied
    relay = Redis.from_url(url, socket_timeout=5)
    admin_commands = [("CONFIG", "GET", "maxmemory"), ("FLUSHALL",), ("KEYS", "*"), ("ACL", "LIST"), ("DEBUG", "SLEEP")]
    for command in admin_commands:
        with pytest.raises(NoPermissionError):
            relay.execute_command(*command)
    with pytest.raises(NoPermissionError):
        relay.set("not-ours", "1")
    relay.close()
    with pytest.raises(Exception, match=r"(?i)auth"):  # the default user is off
        # Asked once: redis-py 8 retries a refused HELLO with back-off by default (4 s more).
        Redis(port=port, socket_timeout=5, retry=Retry(NoBackoff(), 0)).set("relay:x", "1")
