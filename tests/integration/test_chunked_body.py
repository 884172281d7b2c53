"""A chunked request body (no Content-Length) over 1 MiB is refused with 413, through a real
HTTP server on a socket, not cut at the limit and then failed as a bad signature."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis
from werkzeug.serving import make_server

from service import create_app
from service.config import Settings
from service.web.errors import MAX_BODY_BYTES
from tests.conftest import sign, stripe_event


@pytest.fixture
def server(settings: Settings, redis: Redis) -> Iterator[int]:
    httpd = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_port
    httpd.shutdown()
    thread.join(timeout=30)
    httpd.server_close()


def post_chunked(port: int, body: bytes, chunk: int = 64 * 1024) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        chunks = (body[i : i + chunk] for i in range(0, len(body), chunk))
        headers = {"Content-Type": "application/json", "Stripe-Signature": sign(body)}
        connection.request("POST", "/webhooks/stripe", body=chunks, headers=headers, encode_chunked=True)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def event_of_size(size: int) -> bytes:
    obj = {"id": "cus_1", "email": "a@example.com", "metadata": {"user_id": "u1"}, "description": ""}
    body = json.dumps(stripe_event("customer.created", obj, event_id="evt_chunked")).encode()
    return body.replace(b'"description": ""', b'"description": "' + b" " * (size - len(body)) + b'"')


def test_a_chunked_body_over_the_limit_is_413(server: int) -> None:
    status, answer = post_chunked(server, event_of_size(MAX_BODY_BYTES + 200_000))
    assert status == 413 and answer["error"]["code"] == "payload_too_large"


def test_a_chunked_body_one_byte_over_the_limit_is_413(server: int) -> None:
    status, answer = post_chunked(server, event_of_size(MAX_BODY_BYTES + 1))
    assert status == 413 and answer["error"]["code"] == "payload_too_large"


def test_a_chunked_body_at_the_limit_is_read_whole(server: int) -> None:
    status, answer = post_chunked(server, event_of_size(MAX_BODY_BYTES))
    assert status != 413, answer  # read whole: its signature verifies, the schema decides
    assert answer["error"]["code"] == "invalid_payload" if status == 422 else answer["status"] == "accepted"


def test_a_small_chunked_body_is_accepted(server: int) -> None:
    status, answer = post_chunked(server, event_of_size(2000))
    assert status == 202, answer
