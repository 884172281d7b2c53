"""Redis Sentinel: a master (min-replicas-to-write 1), a replica and three sentinels as real
processes; `relay web` finds the master through REDIS_SENTINELS and answers 2xx only once the replica
has the event (RELAY_DURABLE_ACK=replica). The master is SIGKILLed: intake answers 503
(redis_unavailable) while the sentinels fail over, and until the old master, restarted, is a replica
of the promoted one; then it accepts again, and every event answered 2xx is on the master the
sentinels name (without the wait, the last events the dead master had answered but not yet sent
could be lost: seen once in a loaded run). `relay worker`, started then, finds the new master
through the sentinels (its rq scheduler too) and delivers every acknowledged event. (A worker
running when its Redis dies exits, as on any Redis loss, and its restart finds the master the same
way; its jobs in hand wait for rq's abandoned-job recovery, which is too slow for this test.)"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from service.devtools.usercom_sandbox import SandboxServer
from service.store import keys
from service.store.connection import SentinelMasterConnection
from service.store.ledger_dedup import accepted_before
from tests.conftest import SECRET, USERCOM_KEY, close_connections, sign, stripe_event
from tests.integration.redis_launch import Server, start_redis, start_relay, stop_relay, wait_until

MASTER = "relay-master"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, object]]:
    master, master_client = start_redis(tmp_path / "master", "--min-replicas-to-write", "1")
    replica, replica_client = start_redis(tmp_path / "replica", "--replicaof", "127.0.0.1", str(master.port))
    wait_until(lambda: master_client.info("replication")["connected_slaves"] == 1, 30, "the replica to sync")
    sentinels = [
        Server(
            tmp_path / f"sentinel{i}",
            [
                f"sentinel monitor {MASTER} 127.0.0.1 {master.port} 2",
                # 2 s: at 1 s a loaded machine saw a sentinel, slow to reach the new master, fail it over
                f"sentinel down-after-milliseconds {MASTER} 2000",
                f"sentinel failover-timeout {MASTER} 4000",
                f"sentinel parallel-syncs {MASTER} 1",
            ],
            sentinel=True,
        )
        for i in range(3)
    ]
    clients = [Redis(port=s.port, socket_timeout=5) for s in sentinels]

    def sentinels_ready() -> bool:
        for client in clients:
            info = client.sentinel_master(MASTER)
            if int(info["num-slaves"]) < 1 or int(info["num-other-sentinels"]) < 2:
                return False
        return True

    try:
        wait_until(sentinels_ready, 60, "the sentinels to find the replica and each other")
        yield {
            "master": master,
            "replica": replica,
            "replica_client": replica_client,
            "sentinels": sentinels,
            "sentinel_clients": clients,
        }
    finally:
        for client in (*clients, master_client, replica_client):
            client.close()
        for server in (*sentinels, replica, master):
            server.stop()


def test_intake_survives_a_master_failover_without_losing_an_acknowledged_event(
    tmp_path: Path, cluster: dict[str, object], sandbox: SandboxServer
) -> None:
    sentinels = cluster["sentinels"]
    env = {
        "REDIS_SENTINELS": ",".join(f"127.0.0.1:{s.port}" for s in sentinels),  # type: ignore[attr-defined]
        "REDIS_SENTINEL_MASTER": MASTER,
        "STRIPE_WEBHOOK_SECRETS": SECRET,
        "USERCOM_API_URL": sandbox.base_url,
        "USERCOM_API_KEY": USERCOM_KEY,
        "USERCOM_RATE_LIMIT": "1000",
        "USERCOM_BURST": "100",
        "RELAY_DURABLE_ACK": "replica",
    }
    base, processes = start_relay(tmp_path, env, "web")
    old_master = cluster["master"]
    replica_port = cluster["replica"].port  # type: ignore[attr-defined]

    def named_master() -> int | None:
        """The master's port once every sentinel names the same one."""
        named = {c.sentinel_get_master_addr_by_name(MASTER) for c in cluster["sentinel_clients"]}  # type: ignore[attr-defined]
        return int(named.pop()[1]) if len(named) == 1 and None not in named else None

    def failed_over() -> bool:
        """Every sentinel names the replica master: the failover is over, and the old master, back,
        is made its replica (back sooner, it could end the failover and be master again)."""
        return named_master() == replica_port

    restarted: list[Server] = []
    http = urllib3.PoolManager(retries=False, timeout=5)
    acknowledged: list[str] = []
    answers: list[int] = []
    unanswered: list[str] = []  # the client gave up first: accepted or not, unknown
    refused: list[int] = []  # answered 503: kept or not (written, but no replica acknowledged in time)

    def post(n: int) -> int:
        event_id = f"evt_ha_{n}"
        customer = {"id": f"cus_ha{n}", "email": "a@example.com", "metadata": {"user_id": f"u-ha-{n}"}}
        body = json.dumps(stripe_event("customer.created", customer, event_id=event_id)).encode()
        headers = {"Content-Type": "application/json", "Stripe-Signature": sign(body)}
        try:
            answer = http.request("POST", f"{base}/webhooks/stripe", body=body, headers=headers)
        except urllib3.exceptions.HTTPError:
            unanswered.append(event_id)
            return 0
        if 200 <= answer.status < 300:
            acknowledged.append(event_id)
        elif answer.status == 503:
            refused.append(n)
            assert json.loads(answer.data)["error"]["code"] == "redis_unavailable", answer.data
        else:
            raise AssertionError((answer.status, answer.data))
        answers.append(answer.status)
        return answer.status

    try:
        assert [post(n) for n in range(10)] == [202] * 10
        old_master.process.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
        n = 10
        deadline = time.monotonic() + 90
        # 503 while the sentinels notice and promote the replica and until the promoted one has a
        # replica again (the old master, restarted: the sentinels make it one), then 202 again.
        while not (503 in answers[10:] and answers[-1] == 202):
            assert time.monotonic() < deadline, answers[10:]
            if not restarted and 503 in answers[10:] and failed_over():
                workdir, port = old_master.workdir, old_master.port  # type: ignore[attr-defined]
                server, client = start_redis(workdir, "--min-replicas-to-write", "1", port=port)
                restarted.append(server)
                client.close()
            post(n)
            n += 1
            time.sleep(0.05)
        for m in range(n, n + 5):
            assert post(m) == 202
        for m in sorted(set(refused)):  # the provider sends them again: each is answered 2xx now
            assert post(m) in (200, 202)  # 200: kept the first time, a duplicate
        # The master now: the promoted replica, or (the machine loaded, a sentinel slow to reach it)
        # the old master promoted back by a second failover, which WAIT made as complete.
        current = Redis(port=wait_until(named_master, 30, "the sentinels to agree"), socket_timeout=5)
        assert current.info("replication")["role"] == "master"
        assert current.info("commandstats")["cmdstat_wait"]["calls"] >= 5  # each answer waited for the replica
        processes.update(start_relay(tmp_path, env, "worker")[1])
        ledger_key = keys.Keys("usercom").ledger
        wait_until(
            lambda: (ledger := current.hgetall(ledger_key)).get(b"delivered") == ledger.get(b"received"),
            90,
            "the worker to deliver every accepted event",
        )
        known = accepted_before(current, "stripe", acknowledged, 7 * 24 * 3600)
        missing = [e for e, seen in zip(acknowledged, known, strict=True) if not seen]
        assert missing == [], f"{len(missing)} acknowledged events lost of {len(acknowledged)}"
        ledger = {k.decode(): int(v) for k, v in current.hgetall(ledger_key).items()}
        assert len(set(acknowledged)) <= ledger["received"] <= len(set(acknowledged)) + len(unanswered)
        assert ledger["delivered"] == ledger["received"]
        current.close()
    finally:
        close_connections(http)  # else the web's stop waits out each kept-alive connection
        stop_relay(processes)
        for server in restarted:
            server.stop()


def test_a_sentinel_that_is_down_is_asked_once_then_the_next() -> None:
    """redis-py's default retries a sentinel that drops every connection, with a growing backoff, before
    the next sentinel is asked: seconds of a failover, or of `relay dlq` telling Redis is unreachable."""
    accepted: list[int] = []
    with socket.create_server(("127.0.0.1", 0)) as down:

        def drop_every_connection() -> None:
            while True:
                try:
                    connection, _ = down.accept()
                except OSError:  # closed: the test is over
                    return
                accepted.append(1)
                connection.close()

        threading.Thread(target=drop_every_connection, daemon=True).start()
        sentinels = (("127.0.0.1", down.getsockname()[1]),)
        connection = SentinelMasterConnection(sentinels=sentinels, master_name="relay-master")
        with pytest.raises(RedisConnectionError):
            connection.connect()
        assert len(accepted) == 1
