from __future__ import annotations

import time

import pytest
import standardwebhooks
import stripe

from service.core.errors import SignatureExpired, SignatureInvalid, SignatureMissing
from service.sources.lemonsqueezy.source import verify_signature as verify_lemonsqueezy_signature
from service.sources.paddle.source import verify_signature as verify_paddle_signature
from service.sources.standard.source import verify_signature as verify_standard_webhook
from service.sources.standard.source import webhook_key as standard_webhook_key
from service.sources.stripe.source import verify_signature as verify_stripe_signature
from tests.conftest import (
    LEMONSQUEEZY_SECRET,
    OLD_SECRET,
    OLD_STANDARD_SECRET,
    PADDLE_SECRET,
    SECRET,
    STANDARD_SECRET,
    lemonsqueezy_headers,
    paddle_headers,
    sign,
    standard_headers,
)

BODY = b'{"id": "evt_1", "object": "event"}'


def verify(header: str | None, secrets: tuple[str, ...] = (SECRET,), body: bytes = BODY, **kw: float) -> int:
    return verify_stripe_signature(body, header, secrets, tolerance=300, **kw)


def test_accepts_header_made_by_the_official_stripe_library() -> None:
    now = int(time.time())
    assert verify(sign(BODY, timestamp=now)) == now


def test_official_library_accepts_what_we_accept() -> None:
    header = sign(BODY)
    # Cross-check: stripe's own verifier agrees with the header and body we verify.
    assert stripe.WebhookSignature.verify_header(BODY.decode(), header, SECRET, tolerance=300)
    verify(header)


def test_any_configured_secret_verifies_during_rotation() -> None:
    verify(sign(BODY, OLD_SECRET), secrets=(SECRET, OLD_SECRET))


def test_any_v1_in_the_header_may_match() -> None:
    good = sign(BODY).split(",")
    header = f"{good[0]},v1={'0' * 64},{good[1]},v0=ignored"
    verify(header)


def test_rejects_signature_made_with_another_secret() -> None:
    with pytest.raises(SignatureInvalid):
        verify(sign(BODY, "whsec_somebody_else"))


def test_rejects_a_tampered_body() -> None:
    with pytest.raises(SignatureInvalid):
        verify(sign(BODY), body=BODY + b" ")


@pytest.mark.parametrize("header", [None, ""])
def test_missing_header_is_its_own_error(header: str | None) -> None:
    with pytest.raises(SignatureMissing):
        verify(header)


@pytest.mark.parametrize("header", ["garbage", "t=abc,v1=00", "v1=" + "0" * 64, "t=123", "t=123,v0=abc"])
def test_malformed_headers_are_invalid(header: str) -> None:
    with pytest.raises(SignatureInvalid):
        verify(header)


def test_authentic_but_old_signature_is_expired() -> None:
    old = int(time.time()) - 301
    with pytest.raises(SignatureExpired):
        verify(sign(BODY, timestamp=old))


def test_signature_inside_tolerance_is_accepted() -> None:
    verify(sign(BODY, timestamp=int(time.time()) - 250))


def test_expired_is_only_reported_for_authentic_signatures() -> None:
    old = int(time.time()) - 3600
    with pytest.raises(SignatureInvalid):
        verify(sign(BODY, "whsec_forged", timestamp=old))


# --- Standard Webhooks: headers made by the official `standardwebhooks` package ------------


def verify_standard(headers: dict[str, str], body: bytes = BODY, secrets: tuple[str, ...] = (STANDARD_SECRET,)) -> int:
    keys = [standard_webhook_key(s) for s in secrets]
    return verify_standard_webhook(
        body,
        headers.get("webhook-id"),
        headers.get("webhook-timestamp"),
        headers.get("webhook-signature"),
        keys,
        tolerance=300,
    )


def test_standard_webhook_made_by_the_official_package_verifies() -> None:
    headers = standard_headers(BODY)
    standardwebhooks.Webhook(STANDARD_SECRET).verify(BODY, headers)  # the package agrees
    assert verify_standard(headers) == int(headers["webhook-timestamp"])


def test_standard_webhook_rotation_several_signatures_and_secrets() -> None:
    old = standard_headers(BODY, secret=OLD_STANDARD_SECRET)
    verify_standard(old, secrets=(STANDARD_SECRET, OLD_STANDARD_SECRET))
    new = standard_headers(BODY)
    both = {**new, "webhook-signature": f"v1,{'A' * 44} {new['webhook-signature']} v2,ignored"}
    verify_standard(both)
    with pytest.raises(SignatureInvalid):
        verify_standard(old)  # the old secret is no longer configured


def test_standard_webhook_signs_the_id_and_timestamp_too() -> None:
    headers = standard_headers(BODY)
    with pytest.raises(SignatureInvalid):
        verify_standard({**headers, "webhook-id": "msg_other"})
    with pytest.raises(SignatureInvalid):
        verify_standard(headers, body=BODY + b" ")


def test_standard_webhook_outside_the_tolerance_either_way_is_expired() -> None:
    for offset in (-301, 301):
        with pytest.raises(SignatureExpired):
            verify_standard(standard_headers(BODY, timestamp=int(time.time()) + offset))


def test_standard_webhook_missing_or_malformed_headers() -> None:
    headers = standard_headers(BODY)
    with pytest.raises(SignatureMissing, match="webhook-id, webhook-signature"):
        verify_standard({"webhook-timestamp": headers["webhook-timestamp"]})
    with pytest.raises(SignatureInvalid, match="malformed timestamp"):
        verify_standard({**headers, "webhook-timestamp": "soon"})
    with pytest.raises(SignatureInvalid, match="no v1 signature"):
        verify_standard({**headers, "webhook-signature": "garbage"})


def test_standard_webhook_secret_must_be_whsec_base64() -> None:
    assert standard_webhook_key(STANDARD_SECRET) == b"standard-webhooks-test-key-0123"
    for bad in ("secret", "whsec_", "whsec_not base64!"):
        with pytest.raises(ValueError):
            standard_webhook_key(bad)


# --- Paddle Billing and Lemon Squeezy, signed as their docs describe ------------------------


def test_paddle_signature_verifies_and_rotation_sends_several_h1() -> None:
    now = int(time.time())
    header = paddle_headers(BODY, timestamp=now)["Paddle-Signature"]
    assert verify_paddle_signature(BODY, header, [PADDLE_SECRET], tolerance=5) == now
    rotated = header + ";h1=" + "0" * 64
    verify_paddle_signature(BODY, rotated, [PADDLE_SECRET], tolerance=5)
    with pytest.raises(SignatureInvalid):
        verify_paddle_signature(BODY, header, ["pdl_ntfset_other"], tolerance=5)
    with pytest.raises(SignatureInvalid):
        verify_paddle_signature(BODY + b"x", header, [PADDLE_SECRET], tolerance=5)


def test_paddle_signature_older_than_tolerance_or_malformed() -> None:
    old = paddle_headers(BODY, timestamp=int(time.time()) - 6)["Paddle-Signature"]
    with pytest.raises(SignatureExpired):
        verify_paddle_signature(BODY, old, [PADDLE_SECRET], tolerance=5)
    with pytest.raises(SignatureMissing):
        verify_paddle_signature(BODY, None, [PADDLE_SECRET], tolerance=5)
    for bad in ("h1=abc", "ts=1", "ts=x;h1=abc"):
        with pytest.raises(SignatureInvalid):
            verify_paddle_signature(BODY, bad, [PADDLE_SECRET], tolerance=5)


def test_lemonsqueezy_signature() -> None:
    header = lemonsqueezy_headers(BODY)["X-Signature"]
    verify_lemonsqueezy_signature(BODY, header, [LEMONSQUEEZY_SECRET])
    verify_lemonsqueezy_signature(BODY, header.upper(), ["old", LEMONSQUEEZY_SECRET])
    with pytest.raises(SignatureInvalid):
        verify_lemonsqueezy_signature(BODY + b" ", header, [LEMONSQUEEZY_SECRET])
    with pytest.raises(SignatureMissing):
        verify_lemonsqueezy_signature(BODY, "", [LEMONSQUEEZY_SECRET])
