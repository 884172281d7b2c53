"""The redis-server child process the suite, `relay dev` and the benchmarks start
(service/devtools/embedded_redis.py): a port taken before it binds."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from service.devtools import embedded_redis
from service.devtools.embedded_redis import RedisProcess


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
