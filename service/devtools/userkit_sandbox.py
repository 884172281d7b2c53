"""A UserKit API double on a real socket, faithful to shared/seeds/userkit_update_user.txt.

`POST /v1/users/<user_id>` with HTTP Basic auth `api:<app secret>` and a JSON body of the
documented fields (name, username, email, password, auth_type, phone, verified_phone_token)
updates a user that exists and answers the user object. Errors are UserKit's
`{"error": {...}, "errors": [...]}` bodies: 401 bad credentials, 404 unknown user, 400 invalid
fields; queued faults answer first (e.g. 429 with Retry-After, 500).
"""

from __future__ import annotations

import base64
import collections
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, request

from service.devtools.wsgi_server import BackgroundServer

FIELDS = {"name", "username", "email", "password", "auth_type", "phone", "verified_phone_token"}
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass
class UserKitState:
    app_secret: str
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    faults: collections.deque[tuple[int, str | None]] = field(default_factory=collections.deque)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def seed(self, user_ids: list[str]) -> None:
        for user_id in user_ids:
            self.users[user_id] = {"id": user_id, "name": None, "email": None, "verified_phone": None}


def _error(status: int, kind: str, code: str, message: str, param: str | None = None) -> tuple[dict[str, Any], int]:
    error = {"type": kind, "code": code, "message": message, **({"param": param} if param else {})}
    return {"error": error, "errors": [error]}, status


def create_app(state: UserKitState) -> Flask:
    app = Flask("userkit-double")
    expected = "Basic " + base64.b64encode(f"api:{state.app_secret}".encode()).decode()

    @app.post("/v1/users/<user_id>")
    def update_user(user_id: str) -> Any:
        body = request.get_json(silent=True)
        entry = {"user_id": user_id, "body": body, "auth": request.headers.get("Authorization"), "at": time.time()}
        with state.lock:
            state.requests.append(entry)
            fault = state.faults.popleft() if state.faults else None
        answer = _answer(state, expected, user_id, body, fault)
        entry["status"] = answer[1]
        return answer

    return app


def _answer(state: UserKitState, expected: str, user_id: str, body: Any, fault: tuple[int, str | None] | None) -> Any:
    if request.headers.get("Authorization") != expected:
        return _error(401, "authentication_error", "invalid_api_key", "Invalid API key")
    if fault is not None:
        status, retry_after = fault
        headers = {"Retry-After": retry_after} if retry_after else {}
        kind = "rate_limit_error" if status == 429 else "api_error"
        return (*_error(status, kind, "rate_limited" if status == 429 else "server_error", "Try again later"), headers)
    if not isinstance(body, dict):
        return _error(400, "invalid_request_error", "invalid_json", "Request body must be a JSON object")
    errors = [
        {"type": "invalid_request_error", "code": "unknown_param", "param": k, "message": f"Unknown parameter {k}"}
        for k in sorted(set(body) - FIELDS)
    ]
    if "email" in body and not (isinstance(body["email"], str) and EMAIL.match(body["email"])):
        errors.append(
            {"type": "invalid_request_error", "code": "invalid_email", "param": "email", "message": "Invalid email"}
        )
    if "name" in body and not isinstance(body["name"], str):
        errors.append(
            {"type": "invalid_request_error", "code": "invalid_name", "param": "name", "message": "Invalid name"}
        )
    if errors:
        return {"error": errors[0], "errors": errors}, 400
    with state.lock:
        user = state.users.get(user_id)
        if user is None:
            return _error(404, "invalid_request_error", "user_not_found", f"No user with id {user_id}", "user_id")
        user.update({k: v for k, v in body.items() if k in ("name", "email", "username")})
        if "phone" in body:
            user["verified_phone"] = body["phone"]
        return dict(user), 200


class UserKitServer(BackgroundServer):
    def __init__(self, *, app_secret: str) -> None:
        self.state = UserKitState(app_secret=app_secret)
        super().__init__(create_app(self.state))
