"""`relay web` facing clients that misbehave at the HTTP level. Slow clients cannot starve it: a client
stalled mid-body loses its connection at the body deadline, and with the default worker class (gevent:
one greenlet per connection) 50 clients stalled mid-headers or mid-body hold no thread at all while
signed webhooks and /healthz are answered. A request it cannot parse is answered in JSON, as the app
answers."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3

from tests.conftest import sign, stripe_event
from tests.integration import redis_launch

RELAY = str(Path(sys.executable).with_name("relay"))
SECRET = "whsec_slow_client_test"


def answered(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> int:
    # A generous timeout: the test asserts "answered", not how fast; no retries.
    response = urllib3.request(
        "POST" if body else "GET",
        url,
        body=body,
        headers={**(headers or {}), "Connection": "close"},
        timeout=20,
        retries=False,
    )
    return int(response.status)


@pytest.fixture(scope="module")
def web(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # One process, one thread; a 1 s keep-alive (RELAY_WEB_KEEPALIVE_SECONDS), so a header wait
    # ends after 1 s rather than the default 5 s. Kept for the module: its tests leave no state.
    extra = {"RELAY_WEB_WORKERS": "1", "RELAY_WEB_THREADS": "1", "RELAY_WEB_KEEPALIVE_SECONDS": "1"}
    yield from start_web(tmp_path_factory.mktemp("web"), redis_server, extra)


@pytest.fixture
def default_web(redis_server: Any, tmp_path: Path) -> Iterator[str]:
    yield from start_web(tmp_path, redis_server, {})  # the defaults: RELAY_WEB_WORKERS 2, RELAY_WEB_THREADS 4


def start_web(tmp_path: Path, redis_server: Any, extra: dict[str, str]) -> Iterator[str]:
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": redis_server.url, "STRIPE_WEBHOOK_SECRETS": SECRET, **extra}
    process, base = redis_launch.start_web(tmp_path / "web.log", env)
    yield base
    process.terminate()
    process.wait(timeout=30)


def stalled_client(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Stripe-Signature: t=1,v1=00\r\nContent-Length: 1000\r\n\r\n{"
    )
    return sock


def test_a_client_stalled_mid_body_does_not_hold_the_only_thread(web: str) -> None:
    port = int(web.rsplit(":", 1)[1])
    slow = stalled_client(port)
    try:
        assert answered(web + "/healthz") == 200
        body = json.dumps({"id": "evt_slow", "type": "ping", "created": int(time.time()), "data": {"object": {}}})
        status = answered(
            web + "/webhooks/stripe",
            body.encode(),
            {"Stripe-Signature": sign(body, SECRET), "Content-Type": "application/json"},
        )
        assert status < 500
    finally:
        slow.close()


def stalled_in_headers(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
    return sock


def still_open(sock: socket.socket) -> bool:
    """True while the server has neither closed nor answered the connection."""
    sock.setblocking(False)
    try:
        sock.recv(1)  # b"": closed; data: answered
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


SLOW_SOCKETS = 50


class SlowClients:
    """`count` clients, half stalled mid-headers and half mid-body, kept at `count` by a thread that
    replaces any the server closes (gevent ends a header read after --keep-alive, a body read at its
    deadline), so the count holds however long the answers take on a loaded machine."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.sockets = [self.open(n) for n in range(count)]
        self.replaced = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.keep, daemon=True)

    def open(self, n: int) -> socket.socket:
        return stalled_in_headers(self.port) if n % 2 else stalled_client(self.port)

    def keep(self) -> None:
        while not self.stopping.wait(0.1):
            for n, sock in enumerate(self.sockets):
                if not still_open(sock):
                    sock.close()
                    self.sockets[n] = self.open(n)
                    self.replaced += 1

    def __enter__(self) -> SlowClients:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)
        for sock in self.sockets:
            sock.close()


def test_fifty_slow_clients_do_not_starve_webhooks_or_healthz(default_web: str) -> None:
    """With gthread's 2 x 4 threads, clients stalled mid-headers hold every thread (no deadline
    applies there) and nothing else is answered; gevent gives each a greenlet."""
    port = int(default_web.rsplit(":", 1)[1])
    with SlowClients(port, SLOW_SOCKETS) as slow:
        started = time.monotonic()
        assert answered(default_web + "/healthz") == 200
        body = json.dumps({"id": "evt_slow50", "type": "ping", "created": int(time.time()), "data": {"object": {}}})
        headers = {"Stripe-Signature": sign(body, SECRET), "Content-Type": "application/json"}
        assert answered(default_web + "/webhooks/stripe", body.encode(), headers) < 500
        took = time.monotonic() - started
        print(f"answered in {took:.3f} s beside {SLOW_SOCKETS} slow sockets ({slow.replaced} renewed)")


def test_a_client_stalled_mid_headers_is_disconnected(web: str) -> None:
    """gevent bounds the wait for a request's headers by --keep-alive: a stalled client's connection ends."""
    sock = stalled_in_headers(int(web.rsplit(":", 1)[1]))
    try:
        deadline = time.monotonic() + 60
        while still_open(sock):
            assert time.monotonic() < deadline, "the server kept a connection stalled mid-headers"
            time.sleep(0.2)
    finally:
        sock.close()


def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


SECRET_LOOKING = "Bearer admin-token-that-must-not-be-echoed"
# Each request is read whole by gunicorn's first read (under 8 KiB): a server that closes with bytes of it
# unread would reset the connection, and the answer could be lost before the test reads it.
MALFORMED = {
    "a request line over the limit (4094)": (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    "more than 100 header fields": (
        b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % n for n in range(101)) + b"\r\n",
        431,
    ),
    "a request line that is not HTTP": (b"HELLO\r\n\r\n", 400),
    "a header without a colon": (f"GET /healthz HTTP/1.1\r\nHost: x\r\n{SECRET_LOOKING}\r\n\r\n".encode(), 400),
    "a chunk size that is not hex": (
        b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        400,
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_request_gunicorn_cannot_parse_is_answered_in_json(web: str, case: str) -> None:
    """What gunicorn answers itself, to a request it cannot parse, is the app's error shape: JSON with a
    stable code and a message that quotes nothing of the request, never an HTML page."""
    request, status = MALFORMED[case]
    answered, headers, body = exchange(int(web.rsplit(":", 1)[1]), request)
    assert answered == status
    assert headers["content-type"] == "application/json" and int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert error["code"] in ("malformed_request", "request_line_too_long", "header_fields_too_large")
    assert SECRET_LOOKING not in body.decode() and "aaaa" not in error["message"]


def test_relay_web_starts_and_stops_without_a_warning(redis_server: Any, tmp_path: Path) -> None:
    """gevent warned at every worker's start (ssl imported before it patched), in lines that are not JSON."""
    web = start_web(tmp_path, redis_server, {})
    assert answered(next(web) + "/healthz") == 200
    next(web, None)  # stops it
    log = (tmp_path / "web.log").read_text()
    assert "Booting worker" in log  # the log is the web's
    assert "Warning" not in log, log


def test_gunicorn_lines_that_quote_a_request_have_the_secrets_redacted(redis_server: Any, tmp_path: Path) -> None:
    """gunicorn logs a header line it cannot parse whole, in its own format (`curl -H "Authorization Bearer
    $TOKEN"` sends one); the admin token in it is redacted like in the app's own lines."""
    token = "admin-token-typed-without-its-colon-0123456789"
    web = start_web(tmp_path, redis_server, {"RELAY_ADMIN_TOKEN": token})
    port = int(next(web).rsplit(":", 1)[1])
    request = f"GET /admin/dlq HTTP/1.1\r\nHost: x\r\nAuthorization Bearer {token}\r\n\r\n"
    assert exchange(port, request.encode())[0] == 400
    next(web, None)  # stops it
    log = (tmp_path / "web.log").read_text()
    assert "Invalid HTTP Header: 'Authorization Bearer [redacted]'" in log
    assert token not in log


def test_a_body_cut_short_by_the_client_closing_is_400_incomplete_body(web: str) -> None:
    """The client closes its side before its Content-Length is sent: gunicorn ends the body there, and the
    part that came (signed by itself, as a sender would sign the whole) was taken as the event (202)."""
    body = json.dumps(
        stripe_event("customer.created", {"id": "cus_cut", "metadata": {"user_id": "u_cut"}}, event_id="evt_cut")
    ).encode()
    head = (
        f"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Stripe-Signature: {sign(body, SECRET)}\r\nContent-Length: {len(body) + 10}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", int(web.rsplit(":", 1)[1])), timeout=20) as sock:
        sock.sendall(head.encode() + body)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"400", answer
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"]["code"] == "incomplete_body"
