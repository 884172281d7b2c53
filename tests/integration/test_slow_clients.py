"""A client that stalls mid-body cannot hold `relay web`'s only thread: the body read has a deadline."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3

from service.devtools.embedded_redis import free_port
from tests.conftest import sign

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


@pytest.fixture
def web(redis_server: Any) -> Iterator[str]:
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "REDIS_URL": redis_server.url,
        "STRIPE_WEBHOOK_SECRETS": SECRET,
        "RELAY_WEB_WORKERS": "1",
        "RELAY_WEB_THREADS": "1",  # one thread: a stalled client would hold all of them
    }
    process = subprocess.Popen(
        [RELAY, "web", "--bind", f"127.0.0.1:{port}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            answered(base + "/healthz")
            break
        except (OSError, urllib3.exceptions.HTTPError):
            assert time.monotonic() < deadline, "relay web did not start"
            time.sleep(0.1)
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
