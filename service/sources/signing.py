"""What the providers' signature schemes share: HMAC-SHA256 compared in constant time.

Several secrets may be valid at once (rotation) and a header may carry several signatures:
every (secret, signature) pair is compared, so the time taken never tells which one matched.
Each provider's own scheme is in its package (`sources/<provider>/source.py`).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Sequence

from service.core.errors import SignatureExpired, SignatureInvalid, SignatureMissing


def hex_digest(digest: bytes) -> bytes:
    return digest.hex().encode()


def hmac_hex(key: str, signed: bytes) -> str:
    return hmac.new(key.encode(), signed, hashlib.sha256).hexdigest()


def any_match(
    signed: bytes, keys: Sequence[bytes], candidates: Sequence[bytes], encode: Callable[[bytes], bytes]
) -> bool:
    matched = False
    for key in keys:
        expected = encode(hmac.new(key, signed, hashlib.sha256).digest())
        for candidate in candidates:
            matched |= hmac.compare_digest(expected, candidate)
    return matched


def parse_timestamp(value: str, header: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise SignatureInvalid(f"{header} has a malformed timestamp") from None


def check_age(timestamp: int, header: str, tolerance: int, now: float | None, *, future: bool = False) -> None:
    current = time.time() if now is None else now
    if timestamp < current - tolerance or (future and timestamp > current + tolerance):
        raise SignatureExpired(f"{header} timestamp is outside the {tolerance} s tolerance")


def verify_keyed_header(
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
    header; the signature is hex HMAC-SHA256 over `<timestamp><joiner><body>`. Returns the
    signed timestamp."""
    if not header:
        raise SignatureMissing(f"{name} header is missing")
    timestamp_key, signature_key = keys
    timestamp: int | None = None
    candidates: list[bytes] = []
    for item in header.split(separator):
        key, _, value = item.strip().partition("=")
        if key == timestamp_key:
            timestamp = parse_timestamp(value, name)
        elif key == signature_key and value:
            candidates.append(value.encode("ascii", "replace"))
    if timestamp is None:
        raise SignatureInvalid(f"{name} has no timestamp ({timestamp_key}=)")
    if not candidates:
        raise SignatureInvalid(f"{name} has no {signature_key} signature")
    signed = str(timestamp).encode() + joiner + payload
    if not any_match(signed, [s.encode() for s in secrets], candidates, hex_digest):
        raise SignatureInvalid(f"no {name} {signature_key} signature matches a configured secret")
    check_age(timestamp, name, tolerance, now)
    return timestamp
