"""A User.com sandbox: a real HTTP server that behaves like the User.com public API.

Used by `relay dev` (when no User.com credentials are set) and by the tests. It follows
shared/seeds: `Authorization: Token <key>`, every path ends with a slash, JSON bodies only,
404 for unknown users, DRF-style 400 bodies (`{"field": ["message"]}`), first/last name at
most 40 characters, E.164 phone numbers, add-only tags, custom attributes created on first
use by custom id (the v2 update `PUT /users/<id>/` refuses one that does not exist yet, with a
400 naming it), and 429 with `Retry-After` when its optional rate limit is exceeded.

A small control plane under `/__sandbox__/` (not part of User.com) lets a person or a test
look at users and recorded requests, and inject failures; `GET /` lists it all.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request

from service.core.attributes import STANDARD_ATTRIBUTES
from service.devtools.usercom_sandbox.index import index
from service.devtools.usercom_sandbox.model import (
    ApiError,
    Fault,
    SandboxState,
    apply,
    missing_attributes,
    new_user,
    public,
    random_fault,
    split,
    typed,
    unknown_company,
    validate_standard,
)
from service.devtools.wsgi_server import BackgroundServer

__all__ = ["API_PREFIX", "ApiError", "Fault", "SandboxServer", "SandboxState", "create_sandbox_app"]

API_PREFIX = "/api/public"


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
    app.register_blueprint(index)  # GET /: what the sandbox serves, how to inject faults
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
            "user_agent": request.headers.get("User-Agent"),
        }
        with state.lock:
            state.requests.append(entry)
            if state.keep_requests is not None and len(state.requests) >= 2 * state.keep_requests:
                del state.requests[: -state.keep_requests]  # a long session's memory stays bounded
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
        fault = state.faults.popleft() if state.faults else random_fault(state)
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


def _body() -> dict[str, Any]:
    try:
        body = json.loads(request.get_data() or b"null")
    except ValueError as exc:
        raise ApiError(400, {"detail": f"JSON parse error - {exc}"}) from None
    if not isinstance(body, dict):
        raise ApiError(400, {"non_field_errors": ["Invalid data. Expected a dictionary."]})
    return body


@bp.route("/users-by-id/<custom_id>/", methods=["GET", "PUT"])
def user_by_custom_id(custom_id: str) -> Any:
    state = _state()
    if request.method == "PUT":
        standard, custom, tags = split(_body(), custom_allowed=True, companies=state.companies)
    with state.lock:
        user_id = state.by_custom_id.get(custom_id)
        if user_id is None:
            raise ApiError(404, {"detail": "Not found."})
        user = state.users[user_id]
        if request.method == "PUT":
            state.custom_attributes.update(custom)  # "if it doesn't exist yet it will be created"
            apply(user, standard, custom, tags)
            state.dirty = True
        return public(user)


@bp.put("/users/<int:user_id>/")
def update_user_v2(user_id: int) -> Any:
    state = _state()
    if "version=2" not in request.headers.get("Accept", ""):
        raise ApiError(406, {"detail": "This endpoint needs Accept: */*; version=2."})
    body = _body()
    custom_id = body.pop("custom_id", None)
    body.pop("company_custom_id", None)
    standard, custom, tags = split(body, custom_allowed=True, companies=state.companies)
    with state.lock:
        user = state.users.get(user_id)
        if user is None:
            raise ApiError(404, {"detail": "Not found."})
        missing = missing_attributes(state, custom)
        if missing:  # "custom attributes have to be created in the User.com app before sending them"
            raise ApiError(400, missing)
        state.dirty = True
        if custom_id is not None:
            state.by_custom_id[str(custom_id)] = user_id
            user["user_id"] = str(custom_id)
        apply(user, standard, custom, tags)
        return public(user)


@bp.post("/users/update_or_create/")
def update_or_create() -> Any:
    state = _state()
    body = _body()
    custom_id = body.get("user_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise ApiError(400, {"user_id": ["This field is required."]})
    body = {k: v for k, v in body.items() if k != "user_id"}
    standard, _, _ = split(body, custom_allowed=False, companies=state.companies)
    with state.lock:
        existing = state.by_custom_id.get(custom_id)
        user = state.users[existing] if existing is not None else new_user(state, custom_id)
        apply(user, standard, {}, [])
        state.dirty = True
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
    if not isinstance(value, str):  # seeds: "value | string", whatever the attribute's own type
        raise ApiError(400, {"value": ["Not a valid string."]})
    value = typed(attribute, value)
    problem = validate_standard(attribute, value)
    if not problem and attribute == "company_id":
        problem = unknown_company(value, state.companies)
    if problem:
        raise ApiError(400, {"value": [problem]})
    with state.lock:
        for user_id in ids:
            if user_id in state.users:
                apply(state.users[user_id], {attribute: value}, {}, [])
        state.dirty = True
    return {"status": "ok"}


@control.get("/users")
def list_users() -> Any:
    state = _state()
    with state.lock:
        return {"users": [public(u) for u in state.users.values()]}


@control.get("/requests")
def list_requests() -> Any:
    state = _state()
    with state.lock:
        kept = state.requests[-state.keep_requests :] if state.keep_requests is not None else state.requests
        return {"requests": list(kept)}


@control.post("/faults")
def add_faults() -> Any:
    """{"status": 500, "count": 2, "retry_after": "3", "delay": 0.5}: the next `count` API calls fail so."""
    body = request.get_json(force=True, silent=True)
    try:
        count = int(body.get("count", 1))
        fault = Fault(int(body["status"]), body.get("retry_after"), float(body.get("delay", 0)))
    except (AttributeError, KeyError, TypeError, ValueError):
        raise ApiError(400, {"detail": 'Expected a JSON object like {"status": 500, "count": 2}.'}) from None
    state = _state()
    with state.lock:
        state.faults.extend([fault] * count)
    return {"queued": len(state.faults)}


class SandboxServer(BackgroundServer):
    """The sandbox on a real socket, served from a background thread. With `data_file`, users and
    custom attributes are loaded from it and saved to it (within a second of a change, and on stop),
    so the ids a relay learned stay valid across restarts. With `keep_requests`, only the newest
    calls are kept (`relay dev`: a long session's memory stays bounded); else all of them."""

    path = API_PREFIX

    def __init__(
        self,
        *,
        api_key: str,
        host: str = "127.0.0.1",
        port: int = 0,
        rate_limit: float | None = None,
        data_file: Path | None = None,
        keep_requests: int | None = None,
    ) -> None:
        self.state = SandboxState(api_key=api_key, rate_limit=rate_limit, path=data_file, keep_requests=keep_requests)
        self.state.load()
        self._stopping = threading.Event()
        self._saver = threading.Thread(target=self._save_every_second, name="sandbox-save", daemon=True)
        super().__init__(create_sandbox_app(self.state), host, port)

    def start(self) -> SandboxServer:
        super().start()
        if self.state.path is not None:
            self._saver.start()
        return self

    def stop(self) -> None:
        super().stop()
        self._stopping.set()
        self.state.save()

    def _save_every_second(self) -> None:
        while not self._stopping.wait(1.0):
            self.state.save()
