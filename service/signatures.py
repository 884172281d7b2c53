"""Webhook signatures, verified exactly as each provider signs them.

Every scheme is an HMAC-SHA256 over a provider-defined string; several secrets may be valid
at once (rotation) and a header may carry several signatures. Every (secret, signature) pair
is compared, in constant time, so the time taken never tells which one matched.

- Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=...]`, over `"{t}.{body}"`, key = the
  `whsec_...` string as-is. Older than the tolerance: expired.
- Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64> [v1,...]`,
  over `"{id}.{timestamp}.{body}"`, key = base64-decoded `whsec_` secret. Outside the tolerance
  either way (too old or too new): expired.
- Paddle Billing: `Paddle-Signature: ts=<unix>;h1=<hex>[;h1=...]`, over `"{ts}:{body}"`, key =
  the endpoint secret as-is. Older than the tolerance (Paddle's SDKs: 5 s): expired.
- Lemon Squeezy: `X-Signature: <hex>`, over the body, key = the signing secret as-is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable, Sequence

from service.errors import SignatureExpired, SignatureInvalid, SignatureMissing


def _hex(digest: bytes) -> bytes:
    return digest.hex().encode()


def _any_match(
    signed: bytes, keys: Sequence[bytes], candidates: Sequence[bytes], encode: Callable[[bytes], bytes]
) -> bool:
    matched = False
    for key in keys:
        expected = encode(hmac.new(key, signed, hashlib.sha256).digest())
        for candidate in candidates:
            matched |= hmac.compare_digest(expected, candidate)
    return matched


def _timestamp(value: str, header: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise SignatureInvalid(f"{header} has a malformed timestamp") from None


def _check_age(timestamp: int, header: str, tolerance: int, now: float | None, *, future: bool = False) -> None:
    current = time.time() if now is None else now
    if timestamp < current - tolerance or (future and timestamp > current + tolerance):
        raise SignatureExpired(f"{header} timestamp is outside the {tolerance} s tolerance")


def _verify_keyed_header(
    payload: bytes,
    header: str | None,
    secrets: Sequence[str],
    *,
    name: str,
    separator: str,
    keys: tuple[str, str],
    joiner: bytes,
    tolerance: int,
    now: float | None,
) -> int:
    """Stripe's and Paddle's shape: `<ts key>=<unix time>` and `<sig key>=<hex>` items in one
    header; the signature is hex HMAC-SHA256 over `<timestamp><joiner><body>`."""
    if not header:
        raise SignatureMissing(f"{name} header is missing")
    timestamp_key, signature_key = keys
    timestamp: int | None = None
    candidates: list[bytes] = []
    for item in header.split(separator):
        key, _, value = item.strip().partition("=")
        if key == timestamp_key:
            timestamp = _timestamp(value, name)
        elif key == signature_key and value:
            candidates.append(value.encode("ascii", "replace"))
    if timestamp is None:
        raise SignatureInvalid(f"{name} has no timestamp ({timestamp_key}=)")
    if not candidates:
        raise SignatureInvalid(f"{name} has no {signature_key} signature")
    signed = str(timestamp).encode() + joiner + payload
    if not _any_match(signed, [s.encode() for s in secrets], candidates, _hex):
        raise SignatureInvalid(f"no {name} {signature_key} signature matches a configured secret")
    _check_age(timestamp, name, tolerance, now)
    return timestamp


def verify_stripe_signature(
    payload: bytes, header: str | None, secrets: Sequence[str], *, tolerance: int, now: float | None = None
) -> int:
    """Return the signed timestamp, or raise a SignatureError subclass."""
    return _verify_keyed_header(
        payload,
        header,
        secrets,
        name="Stripe-Signature",
        separator=",",
        keys=("t", "v1"),
        joiner=b".",
        tolerance=tolerance,
        now=now,
    )


def verify_paddle_signature(
    payload: bytes, header: str | None, secrets: Sequence[str], *, tolerance: int, now: float | None = None
) -> int:
    return _verify_keyed_header(
        payload,
        header,
        secrets,
        name="Paddle-Signature",
        separator=";",
        keys=("ts", "h1"),
        joiner=b":",
        tolerance=tolerance,
        now=now,
    )


def standard_webhook_key(secret: str) -> bytes:
    """`whsec_<base64>` -> the HMAC key; ValueError when it is not that."""
    if not secret.startswith("whsec_"):
        raise ValueError("not a whsec_ secret")
    try:
        key = base64.b64decode(secret[len("whsec_") :], validate=True)
    except binascii.Error:
        raise ValueError("whsec_ secret is not base64") from None
    if not key:
        raise ValueError("whsec_ secret is empty")
    return key


def verify_standard_webhook(
    payload: bytes,
    webhook_id: str | None,
    webhook_timestamp: str | None,
    header: str | None,
    keys: Sequence[bytes],
    *,
    tolerance: int,
    now: float | None = None,
) -> int:
    missing = [
        name
        for name, value in (
            ("webhook-id", webhook_id),
            ("webhook-timestamp", webhook_timestamp),
            ("webhook-signature", header),
        )
        if not value
    ]
    if missing:
        raise SignatureMissing(f"header(s) missing: {', '.join(missing)}")
    assert webhook_id and webhook_timestamp and header
    timestamp = _timestamp(webhook_timestamp, "webhook-timestamp")
    candidates: list[bytes] = []
    for item in header.split():
        version, _, value = item.partition(",")
        if version == "v1" and value:
            candidates.append(value.encode("ascii", "replace"))
    if not candidates:
        raise SignatureInvalid("webhook-signature has no v1 signature")
    signed = f"{webhook_id}.{timestamp}.".encode() + payload
    if not _any_match(signed, keys, candidates, base64.b64encode):
        raise SignatureInvalid("no webhook-signature v1 signature matches a configured secret")
    _check_age(timestamp, "webhook-timestamp", tolerance, now, future=True)
    return timestamp


def verify_lemonsqueezy_signature(payload: bytes, header: str | None, secrets: Sequence[str]) -> None:
    if not header:
        raise SignatureMissing("X-Signature header is missing")
    candidate = header.strip().lower().encode("ascii", "replace")
    if not _any_match(payload, [s.encode() for s in secrets], [candidate], _hex):
        raise SignatureInvalid("X-Signature does not match a configured secret")
