"""Secrets out of text that leaves the process: log lines, and the provider answers kept in dead letters.

A secret is also looked for the way it appears once it has been written into JSON (`"` and `\\` escaped,
and `/` too by some encoders) or into a URL (percent-encoded): a provider may echo what it was sent
either way in its answer. Longest first, so a secret that contains another is replaced whole."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from urllib.parse import quote

REDACTED = "[redacted]"


def spellings(secret: str) -> set[str]:
    """The secret as written, inside a JSON string, and percent-encoded (either case of hex digits)."""
    in_json = json.dumps(secret)[1:-1]
    encoded = quote(secret, safe="")
    lower_hex = re.sub(r"%[0-9A-F]{2}", lambda escape: escape.group().lower(), encoded)
    return {secret, in_json, in_json.replace("/", "\\/"), encoded, lower_hex}


class Redactor:
    def __init__(self, secrets: Iterable[str] = (), *, spelled: Callable[[str], set[str]] = spellings) -> None:
        found = {spelling for secret in secrets if secret for spelling in spelled(secret)}
        self.secrets = sorted(found, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text


class JsonRedactor(Redactor):
    """For text written by json.dumps (ASCII): every spelling as the JSON writes it, matched only where an
    escape cannot have begun (after an even run of backslashes). Else `\\n` + "opeSecret" would lose
    its "n" to a secret "nopeSecret" and leave an invalid escape; and no spelling holds a bare `"`, so
    none matches across the end of a string."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__(secrets, spelled=lambda secret: {json.dumps(spelling)[1:-1] for spelling in spellings(secret)})
        alternatives = "|".join(map(re.escape, self.secrets))  # longest first: tried first at each place
        self._pattern = re.compile(rf"(?<!\\)((?:\\\\)*)(?:{alternatives})") if self.secrets else None

    def __call__(self, text: str) -> str:
        if self._pattern is None or not any(secret in text for secret in self.secrets):  # most lines: none
            return text
        return self._pattern.sub(rf"\1{REDACTED}", text)
