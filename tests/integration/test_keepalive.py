"""The destinations' HTTP connections (service/destinations/keepalive.py), against a real HTTP/1.1
server on a socket: kept alive, replaced when the server closed them while idle, TLS verified."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trustme

from service.destinations.keepalive import KeepAlivePool

HEADERS = {"Content-Type": "application/json"}


class EchoServer(ThreadingHTTPServer):
    daemon_threads = True
    connections = 0  # accepted
    closed = 0  # ended by the server
    close_after_each = False  # close each connection after its answer, without saying so
    together: threading.Barrier | None = None  # answer only once this many requests are in
    counting = threading.Lock()  # handlers run on threads of their own

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        super().shutdown_request(request)  # closed: the client can see it
        with self.counting:
            self.closed += 1


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: EchoServer

    def setup(self) -> None:
        super().setup()
        with self.server.counting:
            self.server.connections += 1

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.server.together is not None:
            self.server.together.wait(10)
        answer = json.dumps({"got": json.loads(body)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
        self.close_connection = self.server.close_after_each

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


def _serve(context: ssl.SSLContext | None = None) -> Iterator[tuple[EchoServer, str]]:
    server = EchoServer(("127.0.0.1", 0), Echo)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    scheme = "https" if context is not None else "http"
    yield server, f"{scheme}://localhost:{server.server_address[1]}/api"
    server.shutdown()
    server.server_close()


@pytest.fixture
def echo() -> Iterator[tuple[EchoServer, str]]:
    yield from _serve()


def _put(pool: KeepAlivePool, n: int) -> dict[str, object]:
    answer = pool.request("PUT", pool.prefix + f"/users/{n}/", json.dumps({"n": n}).encode(), HEADERS)
    assert answer.status == 200
    return json.loads(answer.body)


def _wait(condition: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_calls_one_after_another_share_one_connection(echo: tuple[EchoServer, str]) -> None:
    server, url = echo
    pool = KeepAlivePool(url, connect_timeout=3, read_timeout=10)
    assert [_put(pool, n) for n in range(3)] == [{"got": {"n": n}} for n in range(3)]
    assert server.connections == 1
    pool.close()


def test_calls_at_once_each_have_a_connection_and_no_more_than_max_idle_stay_open(
    echo: tuple[EchoServer, str],
) -> None:
    server, url = echo
    server.together = threading.Barrier(2)  # neither call is answered before the other is in
    pool = KeepAlivePool(url, connect_timeout=3, read_timeout=10, max_idle=1)
    with ThreadPoolExecutor(max_workers=2) as calls:
        answers = list(calls.map(lambda n: _put(pool, n), range(2), timeout=30))
    assert answers == [{"got": {"n": 0}}, {"got": {"n": 1}}]
    assert server.connections == 2
    _wait(lambda: server.closed == 1)  # the second given back was closed: one may stay idle
    server.together = None
    _put(pool, 3)
    assert server.connections == 2
    pool.close()


def test_a_connection_the_server_closed_while_idle_is_replaced_not_failed(echo: tuple[EchoServer, str]) -> None:
    """Without the check before reuse, the second call would be sent on a closed connection and fail
    (RemoteDisconnected): a delivery retried for nothing."""
    server, url = echo
    server.close_after_each = True
    pool = KeepAlivePool(url, connect_timeout=3, read_timeout=10)
    _put(pool, 1)
    _wait(lambda: server.closed == 1)
    assert _put(pool, 2) == {"got": {"n": 2}}
    assert server.connections == 2
    pool.close()


def test_a_dropped_pool_closes_its_idle_connections(echo: tuple[EchoServer, str]) -> None:
    server, url = echo
    pool = KeepAlivePool(url, connect_timeout=3, read_timeout=10)
    _put(pool, 1)
    del pool
    _wait(lambda: server.closed == 1)


def test_a_closed_pool_keeps_no_connection_given_back_later(echo: tuple[EchoServer, str]) -> None:
    """A call still running when its pool is closed does not leave its connection open."""
    server, url = echo
    server.together = threading.Barrier(2)
    pool = KeepAlivePool(url, connect_timeout=3, read_timeout=10)
    with ThreadPoolExecutor(max_workers=1) as call:
        answer = call.submit(_put, pool, 1)
        _wait(lambda: server.connections == 1)
        pool.close()
        server.together.wait(10)  # the call is answered after the close
        assert answer.result(30) == {"got": {"n": 1}}
    _wait(lambda: server.closed == 1)


@pytest.fixture
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_echo(tls_ca: trustme.CA) -> Iterator[tuple[EchoServer, str]]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("localhost").configure_cert(context)
    yield from _serve(context)


def test_https_is_verified_against_the_trusted_authorities(
    tls_echo: tuple[EchoServer, str], tls_ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The system's authorities (here: SSL_CERT_FILE, which OpenSSL reads for them) decide: a server
    whose certificate no trusted authority signed is refused before anything is sent."""
    _, url = tls_echo
    untrusting = KeepAlivePool(url, connect_timeout=3, read_timeout=10)
    with pytest.raises(ssl.SSLCertVerificationError):
        _put(untrusting, 1)
    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    trusting = KeepAlivePool(url, connect_timeout=3, read_timeout=10)
    assert _put(trusting, 2) == {"got": {"n": 2}}
    trusting.close()
