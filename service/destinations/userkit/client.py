"""The UserKit destination (seed userkit_update_user.txt): `POST /v1/users/<user_id>` with HTTP
Basic auth `api:<app secret>`, carrying what UserKit keeps of a user: name, email and phone.

Error bodies are `{"error": {"type", "code", "param", "message"}, "errors": [...]}`; their codes
and messages become the dead-letter reason text. Custom attributes and tags have no place in
UserKit: an update carrying nothing else is counted as ignored for this destination.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

from service.core.attributes import E164, EMAIL
from service.destinations.base import Limiter
from service.destinations.dropped import DroppedValue
from service.destinations.http_api import ApiClient, HttpApi
from service.ops.metrics import USERKIT_REQUESTS, USERKIT_SECONDS
from service.store import keys

ENDPOINT = "POST /v1/users/:id"


def screen(standard: dict[str, Any]) -> tuple[dict[str, Any], list[DroppedValue]]:
    """UserKit refuses a malformed email or phone with a 400 for the whole update: such a value is
    left out and reported instead (service/destinations/dropped.py)."""
    kept: dict[str, Any] = {}
    dropped: list[DroppedValue] = []
    for name, value in standard.items():
        if name == "email" and value is not None and not (isinstance(value, str) and EMAIL.match(value)):
            dropped.append(DroppedValue(name, "invalid_email"))
        elif name == "phone_number" and value is not None and not (isinstance(value, str) and E164.match(value)):
            dropped.append(DroppedValue(name, "invalid_phone"))
        else:
            kept[name] = value
    return kept, dropped


NAME_PARTS = ("first_name", "last_name")


def userkit_body(standard: dict[str, Any]) -> dict[str, Any]:
    """User.com-style standard attributes -> UserKit's fields."""
    name = " ".join(str(standard[k]) for k in NAME_PARTS if standard.get(k))
    body = {"name": name, "email": standard.get("email"), "phone": standard.get("phone_number")}
    return {k: v for k, v in body.items() if v}


def whole_name(standard: dict[str, Any], memory: str | None) -> tuple[dict[str, Any], str | None]:
    """UserKit keeps one full name: an update naming one part of it is completed with the other part
    as last sent (`memory`, JSON), so {last_name: King} after Ada Lovelace sends "Ada King", not
    "King". Returns the update so completed and what to remember (None: as it was; '': nothing)."""
    if not any(part in standard for part in NAME_PARTS):
        return standard, None
    try:
        known = json.loads(memory) if memory else {}
    except ValueError:
        known = {}
    if not isinstance(known, dict):
        known = {}
    parts = {k: v for k, v in {**known, **{k: standard[k] for k in NAME_PARTS if k in standard}}.items() if v}
    remembered = json.dumps(parts, sort_keys=True) if parts else ""
    return {**standard, **parts}, None if remembered == (memory or "") else remembered


def explain(text: str) -> str:
    """A UserKit error body -> 'invalid_email (email): Invalid email; ...'; the raw text otherwise."""
    try:
        document = json.loads(text)
    except ValueError:
        return text[:200]
    if not isinstance(document, dict):
        return text[:200]
    parts = []
    for error in document.get("errors") or [document.get("error")]:
        if isinstance(error, dict):
            where = f" ({error['param']})" if error.get("param") else ""
            parts.append(f"{error.get('code') or error.get('type')}{where}: {error.get('message', '')}")
    return "; ".join(parts) or text[:200]


class UserKitClient(ApiClient):
    name = "userkit"
    memory_expires = False  # the name's parts: UserKit keeps the whole name for good

    def __init__(
        self,
        *,
        base_url: str,
        app_secret: str,
        connect_timeout: float,
        read_timeout: float,
        pool_size: int = 10,
        limiter: Limiter | None = None,
    ) -> None:
        basic = base64.b64encode(f"api:{app_secret}".encode()).decode()
        super().__init__(
            HttpApi(
                base_url=base_url,
                headers={"Authorization": f"Basic {basic}", "Content-Type": "application/json"},
                secrets=[app_secret, basic],
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                requests=USERKIT_REQUESTS,
                seconds=USERKIT_SECONDS,
                pool_size=pool_size,
                limiter=limiter,
                explain=explain,
            )
        )

    def accepts(self, standard: dict[str, Any], custom: dict[str, Any], tags: list[str]) -> bool:
        # A name part cleared alone changes the full name UserKit keeps (whole_name).
        return bool(userkit_body(standard)) or any(part in standard for part in NAME_PARTS)

    def memory_key(self, user_id: str) -> str:
        return keys.userkit_name(user_id)  # the name's parts last sent: UserKit keeps them as one

    def send(
        self, user_id: str, standard: dict[str, Any], custom: dict[str, Any], tags: list[str], memory: str | None
    ) -> str | None:
        """Returns the name's parts to remember when they changed (whole_name), else None."""
        standard, dropped = screen(standard)
        self._left_out(dropped)
        standard, remembered = whole_name(standard, memory)
        body = userkit_body(standard)
        self._sending(body)  # its trace shows the name it made, never custom attributes or tags
        if body:
            self._api.call("POST", f"/v1/users/{quote(user_id, safe='')}", body, endpoint=ENDPOINT)
        return remembered
