"""Secrets out of text that leaves the process: log lines, and the provider answers kept in dead letters.

A secret is also looked for the way it appears once it has been written into JSON (`"` and `\\` escaped,
and `/` too by some encoders) or into a URL (percent-encoded): a log line is JSON, and a provider may
echo what it was sent either way. Longest first, so a secret that contains another is replaced whole."""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import quote

REDACTED = "[redacted]"


def spellings(secret: str) -> set[str]:
    """The secret as written, inside a JSON string, and percent-encoded."""
    in_json = json.dumps(secret)[1:-1]
    return {secret, in_json, in_json.replace("/", "\\/"), quote(secret, safe="")}


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        found = {spelling for secret in secrets if secret for spelling in spellings(secret)}
        self.secrets = sorted(found, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text
