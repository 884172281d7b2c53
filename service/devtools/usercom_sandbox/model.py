"""The sandbox's model: users, the account's custom attributes, recorded calls, injected faults,
User.com's validation rules, and keeping users across restarts (a JSON file, when given a path)."""

from __future__ import annotations

import collections
import itertools
import json
import random
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.core.attributes import E164, EMAIL, NAME_MAX_LENGTH, STANDARD_ATTRIBUTES

GENDERS = {1: "unknown", 2: "male", 3: "female"}
STATUSES = {1: "visitor", 2: "user"}
BOOLEAN_ATTRIBUTES = {"unsubscribed", "notifications"}


class ApiError(Exception):
    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


@dataclass
class Fault:
    """The next API call fails with `status` (0: answers normally) after `delay` seconds."""

    status: int
    retry_after: str | None = None
    delay: float = 0.0


@dataclass
class SandboxState:
    """Users and recorded calls; shared by the server threads under one lock."""

    api_key: str
    rate_limit: float | None = None  # requests per second over any sliding 1 s window
    # Random failures for chaos runs: status -> probability, e.g. {500: 0.05, 429: 0.02}.
    failure_rates: dict[int, float] = field(default_factory=dict)
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: dict[int, dict[str, Any]] = field(default_factory=dict)
    by_custom_id: dict[str, int] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    keep_requests: int | None = None  # the newest this many calls are kept in `requests` (None: all)
    faults: collections.deque[Fault] = field(default_factory=collections.deque)
    recent: collections.deque[float] = field(default_factory=collections.deque)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1001))
    # Custom attributes that exist in the account: the v2 update refuses any other (seeds).
    custom_attributes: set[str] = field(default_factory=set)
    # Companies of the account: `company_id` adds the user "as employee to company with given
    # company_id" (seeds), so it must name one (inferred: a REST framework refuses an unknown key).
    # None (`relay dev`): any company is taken, as no call creates one here.
    companies: set[str] | None = None
    path: Path | None = None  # users and attributes are kept here across restarts, when set
    dirty: bool = False

    def load(self) -> None:
        """Users and custom attributes saved by an earlier run, if any."""
        if self.path is None or not self.path.exists():
            return
        saved = json.loads(self.path.read_text())
        with self.lock:
            self.users = {int(k): v for k, v in saved["users"].items()}
            self.by_custom_id = {k: int(v) for k, v in saved["by_custom_id"].items()}
            self.custom_attributes = set(saved["custom_attributes"])
            self.ids = itertools.count(max(self.users, default=1000) + 1)

    def save(self) -> None:
        """Write users and custom attributes when changed (atomically: a new file renamed over)."""
        if self.path is None:
            return
        with self.lock:
            if not self.dirty:
                return
            text = json.dumps(
                {
                    "users": self.users,
                    "by_custom_id": self.by_custom_id,
                    "custom_attributes": sorted(self.custom_attributes),
                }
            )
            self.dirty = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".tmp")
        partial.write_text(text)
        partial.replace(self.path)

    def seed(self, custom_ids: list[str]) -> None:
        """Users that already exist (as in a CRM that is already in use)."""
        with self.lock:
            self.dirty = True
            for custom_id in custom_ids:
                if custom_id not in self.by_custom_id:
                    new_user(self, custom_id)

    def user_by_custom_id(self, custom_id: str) -> dict[str, Any] | None:
        with self.lock:
            user_id = self.by_custom_id.get(custom_id)
            return json.loads(json.dumps(self.users[user_id])) if user_id is not None else None


def validate_standard(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if name in ("first_name", "last_name"):
        if not isinstance(value, str):
            return "Not a valid string."
        if len(value) > NAME_MAX_LENGTH:
            return f"Ensure this field has no more than {NAME_MAX_LENGTH} characters."
    elif name == "email":
        if not isinstance(value, str) or not EMAIL.match(value):
            return "Enter a valid email address."
    elif name == "phone_number":
        if not isinstance(value, str) or not E164.match(value):
            return "The phone number entered is not valid."
    elif name == "gender":
        if value not in GENDERS:
            return f'"{value}" is not a valid choice.'
    elif name == "status":
        if value not in STATUSES:
            return f'"{value}" is not a valid choice.'
    elif name in BOOLEAN_ATTRIBUTES:
        if not isinstance(value, bool):
            return "Must be a valid boolean."
    elif name == "score":
        if not isinstance(value, int) or isinstance(value, bool):
            return "A valid integer is required."
    elif not isinstance(value, str):
        return "Not a valid string."
    return None


def typed(name: str, text: str) -> Any:
    """A mass update's string value as the attribute's own type ("2" -> 2, "true" -> True); as it is
    when it does not read as one (refused then by validate_standard)."""
    if name in ("gender", "status", "score") and re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    if name in BOOLEAN_ATTRIBUTES and text in ("true", "false"):
        return text == "true"
    return text


def unknown_company(value: Any, companies: set[str] | None) -> str | None:
    if value is None or companies is None or str(value) in companies:
        return None
    return f'Invalid pk "{value}" - object does not exist.'


def split(
    body: dict[str, Any], *, custom_allowed: bool, companies: set[str] | None
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    errors: dict[str, list[str]] = {}
    standard: dict[str, Any] = {}
    custom: dict[str, Any] = {}
    tags = body.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        errors["tags"] = [f'Expected a list of items but got type "{type(tags).__name__}".']
    for name, value in body.items():
        if name == "tags":
            continue
        if name in STANDARD_ATTRIBUTES:
            problem = validate_standard(name, value)
            if not problem and name == "company_id":
                problem = unknown_company(value, companies)
            if problem:
                errors[name] = [problem]
            standard[name] = value
        elif not custom_allowed:
            errors[name] = ["This attribute is not a standard attribute."]
        elif isinstance(value, dict | list):
            errors[name] = ["Custom attribute values must be scalars."]
        else:
            custom[name] = value
    if errors:
        raise ApiError(400, errors)
    return standard, custom, tags if isinstance(tags, list) else []


def apply(user: dict[str, Any], standard: dict[str, Any], custom: dict[str, Any], tags: list[str]) -> None:
    for name, value in standard.items():
        if name == "gender":
            value = GENDERS[value]
        elif name == "status":
            value = STATUSES[value]
        user[name] = value
    user["attributes"].update(custom)
    for tag in tags:
        if tag not in user["tags"]:
            user["tags"].append(tag)
    user["name"] = " ".join(p for p in (user.get("first_name"), user.get("last_name")) if p) or None
    user["updated_at"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")


def new_user(state: SandboxState, custom_id: str | None) -> dict[str, Any]:
    user = {
        "id": next(state.ids),
        "user_id": custom_id,
        "email": None,
        "first_name": None,
        "last_name": None,
        "name": None,
        "phone_number": None,
        "city": None,
        "country": None,
        "gender": "unknown",
        "status": "visitor",
        "attributes": {},
        "tags": [],
    }
    state.users[user["id"]] = user
    if custom_id is not None:
        state.by_custom_id[custom_id] = user["id"]
    return user


def public(user: dict[str, Any]) -> dict[str, Any]:
    """The read shape: attributes and tags as lists of objects, as User.com returns them."""
    shown = dict(user)
    shown["attributes"] = [{"name": k, "name_std": k, "value": v} for k, v in user["attributes"].items()]
    shown["tags"] = [{"name": t, "id": i} for i, t in enumerate(user["tags"], start=1)]
    return shown


def random_fault(state: SandboxState) -> Fault | None:
    draw = state.rng.random()
    for status, rate in state.failure_rates.items():
        if draw < rate:
            return Fault(status, "1" if status == 429 else None)
        draw -= rate
    return None


def missing_attributes(state: SandboxState, custom: dict[str, Any]) -> dict[str, list[str]]:
    """The v2 update's 400 for custom attributes not created in the account yet (call under the lock)."""
    return {
        name: [f'Attribute "{name}" does not exist. Create it in the User.com app before sending it.']
        for name in custom
        if name not in state.custom_attributes
    }
