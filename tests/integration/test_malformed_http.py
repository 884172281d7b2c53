"""What `relay web` (gunicorn) answers itself, to a request it cannot parse, is the app's error shape:
JSON with a stable code and a message that quotes nothing of the request, never an HTML page."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_slow_clients import start_web


@pytest.fixture(scope="module")
def port(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    for base in start_web(tmp_path_factory.mktemp("web"), redis_server, {"RELAY_WEB_WORKERS": "1"}):
        yield int(base.rsplit(":", 1)[1])


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
def test_a_request_gunicorn_cannot_parse_is_answered_in_json(port: int, case: str) -> None:
    request, status = MALFORMED[case]
    answered, headers, body = exchange(port, request)
    assert answered == status
    assert headers["content-type"] == "application/json" and int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert error["code"] in ("malformed_request", "request_line_too_long", "header_fields_too_large")
    assert SECRET_LOOKING not in body.decode() and "aaaa" not in error["message"]
