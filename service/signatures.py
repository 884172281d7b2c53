"""Stripe webhook signatures, verified exactly as Stripe signs them.

Header: `t=<unix time>,v1=<hex>[,v1=<hex>...]`; signature = HMAC-SHA256(secret, "{t}.{raw body}")
with the `whsec_...` string as the key, as-is. Only `v1` counts. Several secrets may be valid at
once (rotation). Comparison is constant-time; an authentic signature older than the tolerance
is rejected as expired (as Stripe's own libraries do).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence

from service.errors import SignatureExpired, SignatureInvalid, SignatureMissing


def _parse(header: str) -> tuple[int, list[bytes]]:
    timestamp: int | None = None
    signatures: list[bytes] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureInvalid("Stripe-Signature has a malformed timestamp") from None
        elif key == "v1" and value:
            signatures.append(value.encode("ascii", "replace"))
    if timestamp is None:
        raise SignatureInvalid("Stripe-Signature has no timestamp (t=)")
    if not signatures:
        raise SignatureInvalid("Stripe-Signature has no v1 signature")
    return timestamp, signatures


def verify_stripe_signature(
    payload: bytes, header: str | None, secrets: Sequence[str], *, tolerance: int, now: float | None = None
) -> int:
    """Return the signed timestamp, or raise a SignatureError subclass."""
    if not header:
        raise SignatureMissing("Stripe-Signature header is missing")
    timestamp, candidates = _parse(header)
    signed = str(timestamp).encode() + b"." + payload
    matched = False
    for secret in secrets:
        expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest().encode()
        for candidate in candidates:
            # Evaluate every pair: the time taken must not depend on which one matched.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureInvalid("no Stripe-Signature v1 signature matches a configured secret")
    current = time.time() if now is None else now
    if timestamp < current - tolerance:
        raise SignatureExpired(f"Stripe-Signature timestamp is older than the {tolerance} s tolerance")
    return timestamp
