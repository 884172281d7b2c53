"""The redis-server child processes the suite, `relay dev` and the benchmarks start
(service/devtools/embedded_redis.py, and the suite's own launcher for servers with arguments of a
test's own, tests/integration/redis_launch.py): a port taken before it binds."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from service.devtools import embedded_redis
from service.devtools.embedded_redis import RedisProcess
from tests.integration import redis_launch


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_port_it_found_free_but_taken_meanwhile_is_replaced(
    tmp_path: Path, taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = iter([taken_port, embedded_redis.free_port()])
    monkeypatch.setattr(embedded_redis, "free_port", lambda: next(found))
    server = RedisProcess(tmp_path).start()
    try:
        assert server.port != taken_port
        assert Redis.from_url(server.url).ping()
    finally:
        server.stop()


def test_a_port_named_but_taken_fails_with_redis_servers_reason(tmp_path: Path, taken_port: int) -> None:
    with pytest.raises(RuntimeError, match=f"port {taken_port}.*Address already in use"):
        RedisProcess(tmp_path, port=taken_port).start()


def test_the_suite_s_own_launcher_replaces_a_port_another_redis_took_and_never_answers_as_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tests/integration/redis_launch.py: the port unused_port found is taken by another redis-server
    before this one binds it. That one answers PING on the port: without checking whose answer it
    is, a test would run against another test's server."""
    squatter, squatter_client = redis_launch.start_redis(tmp_path / "squatter")
    try:
        found = iter([squatter.port, embedded_redis.free_port()])
        monkeypatch.setattr(redis_launch, "unused_port", lambda: next(found))
        server, client = redis_launch.start_redis(tmp_path / "mine")
        try:
            assert server.port != squatter.port
            assert client.info("server")["process_id"] == server.process.pid
        finally:
            client.close()
            server.stop()
    finally:
        squatter_client.close()
        squatter.stop()
