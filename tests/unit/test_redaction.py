from __future__ import annotations

import json
from urllib.parse import quote

from service.core.redaction import Redactor

ODD = 'k"ey\\with/odd+chars'


def test_every_spelling_of_a_secret_is_redacted() -> None:
    """As written, inside a JSON string (with or without `/` escaped) and percent-encoded: the ways a
    provider's answer may echo what it was sent."""
    redact = Redactor([ODD])
    in_json = json.dumps(ODD)[1:-1]
    encoded = quote(ODD, safe="")
    for spelling in (ODD, in_json, in_json.replace("/", "\\/"), encoded, encoded.lower()):
        assert redact(f"<{spelling}>") == "<[redacted]>", spelling


def test_longest_first_and_empty_secrets_ignored() -> None:
    redact = Redactor(["", "abc", "abcdef"])
    assert redact("abcdef abc xyz") == "[redacted] [redacted] xyz"
