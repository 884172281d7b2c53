"""The destinations' HTTP connections (service/destinations/keepalive.py), against real servers on
sockets: kept alive, replaced when the server closed them while idle, TLS verified; answers framed
every way HTTP/1.1 allows, cut short, malformed or oversized (a scripted server), and the request
refused before sending when it could be split."""

from __future__ import annotations

import http.client
import json
import re
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

from service.destinations import keepalive
from service.destinations.base import Retryable
from service.destinations.http_api import HttpApi
from service.destinations.keepalive import Answer, KeepAlivePool
from service.ops.metrics import USERCOM_REQUESTS, USERCOM_SECONDS

HEADERS = {"Content-Type": "application/json"}
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"


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


class ScriptedServer:
    """A server on a real socket that reads each request whole and answers with the next of
    `answers` byte for byte, so a test gives any framing: chunked, to the close, cut short."""

    def __init__(
        self, answers: list[bytes | None], context: ssl.SSLContext | None = None, trickle: float = 0.0
    ) -> None:
        self.answers = answers  # None: close the connection instead of answering; b"": say nothing
        self.trickle = trickle  # > 0: each answer is sent a byte at a time, this many seconds apart
        self.hold = threading.Event()  # set: a connection held silent (b"") is let go
        self.requests: list[bytes] = []
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.url = self.url.replace("http://127.0.0.1", "https://localhost") if context is not None else self.url
        threading.Thread(target=self._serve, args=(context,), daemon=True).start()

    def _serve(self, context: ssl.SSLContext | None) -> None:
        with self._listener:
            while self.answers:
                conn, _ = self._listener.accept()
                self.connections += 1
                try:
                    if context is not None:  # closed below without TLS's close_notify, as a forged FIN would be
                        conn = context.wrap_socket(conn, server_side=True)
                    self._answer(conn)
                except OSError:  # a client that gives up mid-answer (a test of a limit) is not the server's failure
                    pass
                finally:
                    conn.close()

    def _answer(self, conn: socket.socket) -> None:
        while self.answers and (request := self._read_request(conn)) is not None:
            self.requests.append(request)
            answer = self.answers.pop(0)
            if answer is None:
                return
            if not answer:
                self.hold.wait(10)
                return
            if self.trickle:
                for n in range(len(answer)):
                    conn.sendall(answer[n : n + 1])
                    time.sleep(self.trickle)
            else:
                conn.sendall(answer)
            framed = b"content-length" in answer.lower() or b"transfer-encoding" in answer.lower()
            if b"connection: close" in answer.lower() or not framed:
                return  # the answer ends with the connection

    @staticmethod
    def _read_request(conn: socket.socket) -> bytes | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += conn.recv(65536)
        return data


def _scripted(*answers: bytes | None) -> tuple[ScriptedServer, KeepAlivePool]:
    server = ScriptedServer(list(answers))
    return server, KeepAlivePool(server.url, connect_timeout=3, read_timeout=5)


def _call(pool: KeepAlivePool) -> Answer:
    return pool.request("PUT", "/users/1/", b'{"n": 1}', HEADERS)


def test_a_chunked_answer_is_read_whole_and_its_connection_kept() -> None:
    chunked = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{"a"\r\n3\r\n: 1\r\n1\r\n}\r\n0\r\n\r\n'
    server, pool = _scripted(chunked, chunked)
    assert [json.loads(_call(pool).body) for _ in range(2)] == [{"a": 1}, {"a": 1}]
    assert server.connections == 1
    pool.close()


def test_a_body_without_length_runs_to_the_close_and_the_next_call_opens_a_new_connection() -> None:
    server, pool = _scripted(b'HTTP/1.1 200 OK\r\n\r\n{"to": "the close"}', OK)
    assert json.loads(_call(pool).body) == {"to": "the close"}
    assert _call(pool).status == 200
    assert server.connections == 2
    pool.close()


def test_an_answer_saying_connection_close_is_not_kept() -> None:
    server, pool = _scripted(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}", OK)
    assert _call(pool).body == b"{}"
    assert _call(pool).status == 200
    assert server.connections == 2
    pool.close()


def test_an_answer_cut_short_or_missing_fails_the_call() -> None:
    """What a delivery must retry, never read as a (shorter) answer."""
    _, pool = _scripted(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"cut": ')
    with pytest.raises(http.client.IncompleteRead):
        _call(pool)
    _, pool = _scripted(None)
    with pytest.raises(http.client.RemoteDisconnected):
        _call(pool)
    _, pool = _scripted(b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{"cut": ')
    with pytest.raises(http.client.IncompleteRead):
        _call(pool)


def test_a_malformed_answer_fails_the_call_and_its_connection_is_dropped() -> None:
    server, pool = _scripted(b"SMTP ready\r\n\r\n", OK)
    with pytest.raises(http.client.HTTPException):
        _call(pool)
    assert _call(pool).status == 200
    assert server.connections == 2


def test_an_interim_answer_is_skipped_and_headers_are_read_by_lower_case_name_first_value() -> None:
    """A repeated header reads as its first value, as http.client's did: two `Retry-After: 7` must
    not read as "7, 7", which is no pause at all."""
    _, pool = _scripted(
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nVary: a\r\nvary: b\r\nContent-Length: 2\r\n\r\n{}",
    )
    answer = _call(pool)
    assert (answer.status, answer.headers["retry-after"], answer.headers["vary"]) == (429, "7", "a")
    pool.close()


def test_more_than_one_answer_to_one_request_drops_the_connection() -> None:
    """An answer nobody asked for would be read as the next request's: the connection is out of step."""
    server, pool = _scripted(OK + OK, OK)
    assert _call(pool).status == 200
    assert _call(pool).status == 200
    assert server.connections == 2
    pool.close()


def test_a_request_a_path_or_header_would_split_is_refused_before_anything_is_sent() -> None:
    server, pool = _scripted(OK)
    with pytest.raises(ValueError, match="space or control"):
        pool.request("PUT", "/users/1/ HTTP/1.1\r\nX-Injected: 1", b"{}", HEADERS)
    with pytest.raises(ValueError, match="split the request"):
        pool.request("PUT", "/users/1/", b"{}", {"X-Note": "a\r\nX-Injected: 1"})
    with pytest.raises(ValueError, match="HEAD"):  # would wait for the body its answer announces
        pool.request("HEAD", "/users/1/", b"", {})
    assert _call(pool).status == 200
    assert server.requests == [server.requests[0]] and b"Injected" not in server.requests[0]
    pool.close()


def test_the_request_names_its_host_and_asks_for_no_content_coding() -> None:
    """Without Accept-Encoding a server may compress the answer, which nothing here would undo."""
    server, pool = _scripted(OK)
    _call(pool)
    head = server.requests[0].split(b"\r\n\r\n")[0].split(b"\r\n")
    port = server.url.rsplit(":", 1)[1]
    assert head[0] == b"PUT /users/1/ HTTP/1.1"
    assert f"Host: 127.0.0.1:{port}".encode() in head
    assert b"Accept-Encoding: identity" in head and b"Content-Length: 8" in head
    pool.close()


def test_a_server_that_does_not_answer_in_time_fails_the_call() -> None:
    server = ScriptedServer([b""])
    pool = KeepAlivePool(server.url, connect_timeout=3, read_timeout=0.2)
    with pytest.raises(TimeoutError):
        _call(pool)
    server.hold.set()


def test_an_answer_trickled_slower_than_the_read_timeout_fails_the_call() -> None:
    """The read timeout bounds the whole answer, not each read: a server sending a byte every 20 ms
    would otherwise hold the call (and its worker) as long as it likes."""
    server = ScriptedServer([OK], trickle=0.02)  # OK's 40 bytes take 0.8 s
    pool = KeepAlivePool(server.url, connect_timeout=3, read_timeout=0.3)
    with pytest.raises(TimeoutError):
        _call(pool)
    pool.close()


def test_an_answer_then_bytes_nobody_asked_for_is_kept_and_its_connection_dropped() -> None:
    """The answer is whole: the call succeeds (a failure would send the delivery again); what follows
    it could be read as the next call's answer, so the connection goes."""
    server, pool = _scripted(OK + b"XYZ", OK)
    assert _call(pool).body == b"{}"
    assert _call(pool).status == 200
    assert server.connections == 2
    pool.close()


def test_a_chunked_body_s_trailer_is_not_read_as_a_header() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nRetry-After: 9\r\n\r\n"
    _, pool = _scripted(chunked)
    answer = _call(pool)
    assert (answer.body, "retry-after" in answer.headers) == (b"{}", False)
    pool.close()


def test_an_answer_with_too_many_headers_fails_at_once_instead_of_holding_the_worker() -> None:
    flood = b"HTTP/1.1 200 OK\r\n" + b"a: b\r\n" * 50_000 + b"Content-Length: 2\r\n\r\n{}"
    _, pool = _scripted(flood)
    with pytest.raises(http.client.HTTPException, match="headers"):
        _call(pool)


def test_headers_that_are_not_tokens_or_that_frame_the_request_are_refused() -> None:
    server, pool = _scripted(OK)
    for name in (" X-Folded", "", "X Space", "Content-Length", "transfer-encoding", "Host"):
        with pytest.raises(ValueError, match="header"):
            pool.request("PUT", "/users/1/", b"{}", {name: "1"})
    assert _call(pool).status == 200 and len(server.requests) == 1
    pool.close()


def test_an_https_answer_cut_by_a_close_without_close_notify_fails_the_call(
    tls_ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over TLS a body that runs to the close is whole only when the server ends TLS itself: a bare
    TCP close (anyone on the path can forge one) fails the call, to be retried."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("localhost").configure_cert(context)
    server = ScriptedServer([b'HTTP/1.1 200 OK\r\n\r\n{"cut": '], context)
    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    pool = KeepAlivePool(server.url, connect_timeout=3, read_timeout=5)
    with pytest.raises(ssl.SSLEOFError):
        _call(pool)


def test_a_2xx_answer_that_is_not_json_is_retried_not_raised_as_a_bug() -> None:
    server, _ = _scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n<html>ok</html>")
    api = HttpApi(
        base_url=server.url,
        headers={"Content-Type": "application/json"},
        secrets=[],
        connect_timeout=3,
        read_timeout=5,
        requests=USERCOM_REQUESTS,
        seconds=USERCOM_SECONDS,
    )
    with pytest.raises(Retryable, match="not JSON"):
        api.call("PUT", "/users/1/", {"n": 1}, endpoint="users")


def test_an_answer_s_body_past_the_limit_fails_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keepalive, "MAX_BODY_BYTES", 10)
    _, pool = _scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n" + b"x" * 11)
    with pytest.raises(http.client.HTTPException, match="body over 10 bytes"):
        _call(pool)
