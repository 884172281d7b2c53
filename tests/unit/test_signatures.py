from __future__ import annotations

import time

import pytest
import stripe

from service.errors import SignatureExpired, SignatureInvalid, SignatureMissing
from service.signatures import verify_stripe_signature
from tests.conftest import OLD_SECRET, SECRET, sign

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
