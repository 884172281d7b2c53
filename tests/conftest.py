"""Shared fixtures: a real redis-server process, the User.com sandbox on a real socket,
requests signed with the official `stripe` and `standardwebhooks` packages (Paddle and Lemon
Squeezy as their docs describe), and the shared payloads."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks
import stripe
import urllib3
from redis import Redis

from service import create_app
from service.config import Settings
from service.config.settings import DEFAULT_MAX_CLOCK_SKEW_SECONDS
from service.core.update import UserUpdate
from service.devtools.embedded_redis import RedisProcess
from service.devtools.usercom_sandbox import SandboxServer
from service.intake import read_event
from service.mapping import load_mapping
from service.sources.base import SourceSettings
from service.sources.registry import SOURCES
from service.store import keys
from tests import children

# Before anything starts a process: every child of the suite dies with the pytest process that started it.
children.install()

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RELAY_SHARED_DIR", REPO.parent / "shared"))
SECRET = "whsec_test_primary_0123456789abcdef"
OLD_SECRET = "whsec_test_rotated_out_fedcba9876543210"
USERCOM_KEY = "k" * 24 + "usercomtestkey" + "0" * 26  # 64 characters, like a real key
STANDARD_SECRET = "whsec_" + base64.b64encode(b"standard-webhooks-test-key-0123").decode()
OLD_STANDARD_SECRET = "whsec_" + base64.b64encode(b"standard-webhooks-old-key-98765").decode()
PADDLE_SECRET = "pdl_ntfset_01htest_secretkey0123456789"
LEMONSQUEEZY_SECRET = "lemon-squeezy-signing-secret-42"
SOURCE_ENV = {
    "STANDARD_WEBHOOK_SECRETS": f"{STANDARD_SECRET},{OLD_STANDARD_SECRET}",
    "PADDLE_WEBHOOK_SECRETS": PADDLE_SECRET,
    "LEMONSQUEEZY_WEBHOOK_SECRETS": LEMONSQUEEZY_SECRET,
}


def load_fixture(name: str, provider: str = "stripe") -> dict[str, Any]:
    path = SHARED / "fixtures" / provider / name
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: tests need ../shared beside the repo (or RELAY_SHARED_DIR)")
    return json.loads(path.read_text())


def stripe_event(
    event_type: str,
    obj: dict[str, Any],
    *,
    event_id: str,
    created: int = 1_700_000_000,
    api_version: str = "2025-03-31.basil",
) -> dict[str, Any]:
    """Wrap a bare Stripe object (as in the pay-data / openapi fixtures) in an Event envelope."""
    return {
        "id": event_id,
        "object": "event",
        "api_version": api_version,
        "created": created,
        "livemode": False,
        "type": event_type,
        "data": {"object": obj},
    }


def newest_slot(redis: Redis, window: str = keys.USERCOM.limiter_window) -> float:
    """The time (ms) of the newest slot in a limiter's window."""
    [(_, at)] = redis.zrevrange(window, 0, 0, withscores=True)
    return float(at)


def an_update(event_id: str = "evt_1", **fields: Any) -> UserUpdate:
    """A normalized update as intake makes them; keyword arguments override its fields."""
    values: dict[str, Any] = {
        "source": "stripe",
        "event_id": event_id,
        "event_type": "invoice.paid",
        "event_time": 1,
        "user_id": "u1",
        "customer_id": None,
        "custom": {"plan": "pro"},
    }
    return UserUpdate(**{**values, **fields})


@dataclass(frozen=True)
class Read:
    event_id: str
    event_type: str
    update: UserUpdate | None


DEFAULT_MAPPING = load_mapping(None)


def read(
    source: str,
    payload: Any,
    identity_key: str = "user_id",
    webhook_id: str = "",
    trusted: frozenset[str] = frozenset(),
) -> Read:
    """An event as intake reads it once its signature checked: the source's envelope, then the
    default mapping (raises marshmallow's ValidationError when either does not fit). `trusted`:
    the buyer-settable identity fields trusted (RELAY_TRUSTED_IDENTITY_FIELDS)."""
    spec = SOURCES[source]
    reader = spec.build(SourceSettings((), spec.default_tolerance, identity_key))
    headers = {"webhook-id": webhook_id}
    skew = DEFAULT_MAX_CLOCK_SKEW_SECONDS
    envelope, update = read_event(reader, DEFAULT_MAPPING, identity_key, payload, headers, trusted, max_clock_skew=skew)
    return Read(envelope.event_id, envelope.event_type, update)


def sign(payload: bytes | str, secret: str = SECRET, timestamp: int | None = None) -> str:
    text = payload.decode() if isinstance(payload, bytes) else payload
    return stripe.WebhookSignature.generate_signature_header(
        text, secret, timestamp=int(time.time()) if timestamp is None else timestamp
    )


def standard_headers(
    body: bytes, msg_id: str = "msg_1", secret: str = STANDARD_SECRET, timestamp: int | None = None
) -> dict[str, str]:
    """Signed by the official standardwebhooks package, as a sender would."""
    moment = datetime.fromtimestamp(int(time.time()) if timestamp is None else timestamp, UTC)
    signature = standardwebhooks.Webhook(secret).sign(msg_id, moment, body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(moment.timestamp())), "webhook-signature": signature}


def paddle_headers(body: bytes, secret: str = PADDLE_SECRET, timestamp: int | None = None) -> dict[str, str]:
    """As Paddle documents it: ts=<unix>;h1=hex HMAC-SHA256 of "{ts}:{body}"."""
    ts = int(time.time()) if timestamp is None else timestamp
    h1 = hmac.new(secret.encode(), f"{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"Paddle-Signature": f"ts={ts};h1={h1}"}


def lemonsqueezy_headers(body: bytes, secret: str = LEMONSQUEEZY_SECRET) -> dict[str, str]:
    """As Lemon Squeezy documents it: X-Signature = hex HMAC-SHA256 of the body."""
    return {"X-Signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}


def standard_event(user_id: str = "u1", event_time: str = "2026-11-23T10:00:00Z", **data: Any) -> dict[str, Any]:
    return {"type": "user.updated", "timestamp": event_time, "data": {"user_id": user_id, **data}}


def close_connections(http: urllib3.PoolManager) -> None:
    """Close every connection `http` keeps alive, as a load balancer drains a pod before stopping it.

    urllib3 2's PoolManager.clear() forgets its pools without closing them: the web then held each
    idle connection until its keep-alive timeout ran out (5 s more in every teardown)."""
    for key in list(http.pools.keys()):
        pool = http.pools.get(key)
        if pool is not None:
            pool.close()
    http.clear()


@pytest.fixture(scope="session", autouse=True)
def children_tmpdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The children's TMPDIR: the run's base temporary directory (short enough for chromium's socket
    paths), removed with pytest's old runs; a relay SIGKILLed on purpose leaves its metrics directory there."""
    children.use_tmpdir(tmp_path_factory.getbasetemp())
    yield
    children.use_tmpdir(None)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis(redis_server: RedisProcess) -> Iterator[Redis]:
    client = Redis.from_url(redis_server.url, socket_timeout=5)
    client.flushall()
    yield client
    client.flushall()
    client.close()


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    server = SandboxServer(api_key=USERCOM_KEY).start()
    server.state.companies = set()  # as an account without companies: any company_id is refused
    yield server
    server.stop()


@pytest.fixture
def env(redis: Redis, redis_server: RedisProcess, sandbox: SandboxServer) -> dict[str, str]:
    """The settings of a relay on the test's Redis, emptied first (`redis`): no test sees another's
    dedup memory, last-written times or checkpoints, in whatever order xdist runs them."""
    return {
        "REDIS_URL": redis_server.url,
        "STRIPE_WEBHOOK_SECRETS": f"{SECRET},{OLD_SECRET}",
        **SOURCE_ENV,
        "USERCOM_API_URL": sandbox.base_url,
        "USERCOM_API_KEY": USERCOM_KEY,
        "RELAY_RETRY_BASE_SECONDS": "1",
        "RELAY_RETRY_MAX_DELAY_SECONDS": "4",
        "RELAY_RETRY_GIVE_UP_SECONDS": "30",
        # The limiter is tested on its own (test_ratelimit.py); elsewhere it must not slow tests down.
        "USERCOM_RATE_LIMIT": "1000",
        "USERCOM_BURST": "100",
    }


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    return Settings.from_env(env)


@pytest.fixture
def client(settings: Settings, redis: Redis) -> Any:
    app = create_app(settings)
    app.testing = True
    return app.test_client()


@pytest.fixture
def post_event(client: Any) -> Callable[..., Any]:
    """POST an event (dict or raw bytes) to /webhooks/stripe, signed unless told otherwise."""

    def post(
        event: dict[str, Any] | bytes,
        *,
        signature: str | None = "sign",
        secret: str = SECRET,
        content_type: str = "application/json",
    ) -> Any:
        body = event if isinstance(event, bytes) else json.dumps(event).encode()
        headers = {}
        if signature == "sign":
            headers["Stripe-Signature"] = sign(body, secret)
        elif signature is not None:
            headers["Stripe-Signature"] = signature
        return client.post("/webhooks/stripe", data=body, headers=headers, content_type=content_type)

    return post
