"""A User.com sandbox: a real HTTP server that behaves like the User.com public API.

Used by `relay dev` (when no User.com credentials are set) and by the tests. It follows
shared/seeds: `Authorization: Token <key>`, every path ends with a slash, JSON bodies only,
404 for unknown users, DRF-style 400 bodies (`{"field": ["message"]}`), first/last name at
most 40 characters, E.164 phone numbers, add-only tags, custom attributes created on first
use, and 429 with `Retry-After` when its optional rate limit is exceeded.

A small control plane under `/__sandbox__/` (not part of User.com) lets a person or a test
look at users and recorded requests, and inject failures.
"""

from __future__ import annotations

import collections
import itertools
import json
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request

from service.core.attributes import E164, EMAIL, NAME_MAX_LENGTH, STANDARD_ATTRIBUTES
from service.devtools.wsgi_server import BackgroundServer

API_PREFIX = "/api/public"
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
    faults: collections.deque[Fault] = field(default_factory=collections.deque)
    recent: collections.deque[float] = field(default_factory=collections.deque)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1001))

    def seed(self, custom_ids: list[str]) -> None:
        """Users that already exist (as in a CRM that is already in use)."""
        with self.lock:
            for custom_id in custom_ids:
                if custom_id not in self.by_custom_id:
                    _new_user(self, custom_id)

    def user_by_custom_id(self, custom_id: str) -> dict[str, Any] | None:
        with self.lock:
            user_id = self.by_custom_id.get(custom_id)
            return json.loads(json.dumps(self.users[user_id])) if user_id is not None else None


bp = Blueprint("usercom", __name__)
control = Blueprint("sandbox", __name__)


def create_sandbox_app(state: SandboxState) -> Flask:
    app = Flask("usercom-sandbox")
    app.extensions["sandbox"] = state
    app.url_map.strict_slashes = False  # no redirect: a path without its slash is a 404, checked in _gate
    app.before_request(_record)
    app.after_request(_record_status)
    app.register_blueprint(bp, url_prefix=API_PREFIX)
    app.register_blueprint(control, url_prefix="/__sandbox__")
    app.register_error_handler(ApiError, lambda e: (e.body, e.status, e.headers))
    app.register_error_handler(404, lambda e: ({"detail": "Not found."}, 404))
    app.register_error_handler(405, lambda e: ({"detail": f'Method "{request.method}" not allowed.'}, 405))
    return app


def _state() -> SandboxState:
    return current_app.extensions["sandbox"]


def _record() -> None:
    """Every call to the API, routed or not: `path` decoded, as routing sees it; `raw_path` as sent."""
    if request.path.startswith(API_PREFIX):
        state = _state()
        entry = {
            "method": request.method,
            "path": request.path,
            "raw_path": request.environ.get("REQUEST_URI", request.full_path).split("?")[0],
            "at": time.time(),
            "body": request.get_json(silent=True),
        }
        with state.lock:
            state.requests.append(entry)
        g.sandbox_entry = entry


def _record_status(response: Response) -> Response:
    entry = g.get("sandbox_entry")
    if entry is not None:
        entry["status"] = response.status_code
    return response


@bp.before_request
def _gate() -> None:
    state = _state()
    if not request.path.endswith("/"):
        raise ApiError(404, {"detail": "Not found."})
    header = request.headers.get("Authorization", "")
    if not header:
        raise ApiError(401, {"detail": "Authentication credentials were not provided."})
    scheme, _, token = header.partition(" ")
    if scheme != "Token" or token != state.api_key:
        raise ApiError(401, {"detail": "Invalid token."})
    now = time.monotonic()
    with state.lock:
        fault = state.faults.popleft() if state.faults else _random_fault(state)
    if fault is not None:
        time.sleep(fault.delay)
        if fault.status:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            raise ApiError(fault.status, {"detail": f"Injected failure {fault.status}."}, headers)
    with state.lock:
        if state.rate_limit is not None:
            while state.recent and state.recent[0] <= now - 1.0:
                state.recent.popleft()
            if len(state.recent) >= state.rate_limit:
                wait = max(1, int(state.recent[0] + 1.0 - now + 0.999))
                raise ApiError(
                    429,
                    {"detail": f"Request was throttled. Expected available in {wait} seconds."},
                    {"Retry-After": str(wait)},
                )
            state.recent.append(now)
    if request.method in ("PUT", "POST"):
        media = (request.content_type or "").split(";")[0].strip()
        if media != "application/json":
            raise ApiError(415, {"detail": f'Unsupported media type "{media}" in request.'})


def _random_fault(state: SandboxState) -> Fault | None:
    draw = state.rng.random()
    for status, rate in state.failure_rates.items():
        if draw < rate:
            return Fault(status, "1" if status == 429 else None)
        draw -= rate
    return None


def _body() -> dict[str, Any]:
    try:
        body = json.loads(request.get_data() or b"null")
    except ValueError as exc:
        raise ApiError(400, {"detail": f"JSON parse error - {exc}"}) from None
    if not isinstance(body, dict):
        raise ApiError(400, {"non_field_errors": ["Invalid data. Expected a dictionary."]})
    return body


def _validate_standard(name: str, value: Any) -> str | None:
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


def _split(body: dict[str, Any], *, custom_allowed: bool) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
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
            problem = _validate_standard(name, value)
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


def _apply(user: dict[str, Any], standard: dict[str, Any], custom: dict[str, Any], tags: list[str]) -> None:
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


def _new_user(state: SandboxState, custom_id: str | None) -> dict[str, Any]:
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


def _public(user: dict[str, Any]) -> dict[str, Any]:
    """The read shape: attributes and tags as lists of objects, as User.com returns them."""
    shown = dict(user)
    shown["attributes"] = [{"name": k, "name_std": k, "value": v} for k, v in user["attributes"].items()]
    shown["tags"] = [{"name": t, "id": i} for i, t in enumerate(user["tags"], start=1)]
    return shown


@bp.route("/users-by-id/<custom_id>/", methods=["GET", "PUT"])
def user_by_custom_id(custom_id: str) -> Any:
    state = _state()
    if request.method == "PUT":
        standard, custom, tags = _split(_body(), custom_allowed=True)
    with state.lock:
        user_id = state.by_custom_id.get(custom_id)
        if user_id is None:
            raise ApiError(404, {"detail": "Not found."})
        user = state.users[user_id]
        if request.method == "PUT":
            _apply(user, standard, custom, tags)
        return _public(user)


@bp.put("/users/<int:user_id>/")
def update_user_v2(user_id: int) -> Any:
    state = _state()
    if "version=2" not in request.headers.get("Accept", ""):
        raise ApiError(406, {"detail": "This endpoint needs Accept: */*; version=2."})
    body = _body()
    custom_id = body.pop("custom_id", None)
    body.pop("company_custom_id", None)
    standard, custom, tags = _split(body, custom_allowed=True)
    with state.lock:
        user = state.users.get(user_id)
        if user is None:
            raise ApiError(404, {"detail": "Not found."})
        if custom_id is not None:
            state.by_custom_id[str(custom_id)] = user_id
            user["user_id"] = str(custom_id)
        _apply(user, standard, custom, tags)
        return _public(user)


@bp.post("/users/update_or_create/")
def update_or_create() -> Any:
    state = _state()
    body = _body()
    custom_id = body.get("user_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise ApiError(400, {"user_id": ["This field is required."]})
    standard, _, _ = _split({k: v for k, v in body.items() if k != "user_id"}, custom_allowed=False)
    with state.lock:
        existing = state.by_custom_id.get(custom_id)
        user = state.users[existing] if existing is not None else _new_user(state, custom_id)
        _apply(user, standard, {}, [])
        return {"created": existing is None, "id": user["id"]}, 201 if existing is None else 200


@bp.put("/users/mass_update_standard_attributes/")
def mass_update() -> Any:
    state = _state()
    body = _body()
    ids, attribute, value = body.get("ids"), body.get("attribute"), body.get("value")
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise ApiError(400, {"ids": ["A list of integers is required."]})
    if attribute not in STANDARD_ATTRIBUTES or attribute == "user_id":
        raise ApiError(400, {"attribute": [f'"{attribute}" is not a valid choice.']})
    problem = _validate_standard(attribute, value)
    if problem:
        raise ApiError(400, {"value": [problem]})
    with state.lock:
        for user_id in ids:
            if user_id in state.users:
                _apply(state.users[user_id], {attribute: value}, {}, [])
    return {"status": "ok"}


@control.get("/users")
def list_users() -> Any:
    state = _state()
    with state.lock:
        return {"users": [_public(u) for u in state.users.values()]}


@control.get("/requests")
def list_requests() -> Any:
    state = _state()
    with state.lock:
        return {"requests": list(state.requests)}


@control.post("/faults")
def add_faults() -> Any:
    """{"status": 500, "count": 2, "retry_after": "3", "delay": 0.5}: the next `count` API calls fail so."""
    body = request.get_json(force=True)
    state = _state()
    with state.lock:
        for _ in range(int(body.get("count", 1))):
            state.faults.append(Fault(int(body["status"]), body.get("retry_after"), float(body.get("delay", 0))))
    return {"queued": len(state.faults)}


class SandboxServer(BackgroundServer):
    """The sandbox on a real socket, served from a background thread."""

    path = API_PREFIX

    def __init__(
        self, *, api_key: str, host: str = "127.0.0.1", port: int = 0, rate_limit: float | None = None
    ) -> None:
        self.state = SandboxState(api_key=api_key, rate_limit=rate_limit)
        super().__init__(create_sandbox_app(self.state), host, port)
