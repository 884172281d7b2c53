"""`GET /` on the sandbox: what it serves and how to drive it, for a person with a browser or curl."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, request

index = Blueprint("sandbox_index", __name__)

CONTROL = {
    "GET /__sandbox__/users": "every user the sandbox holds (custom id, attributes, tags)",
    "GET /__sandbox__/requests": "{calls} made to the API, in order: method, path, body, status, at",
    "POST /__sandbox__/faults": "make the next API calls fail: see `faults`",
}
FAULTS = {
    "how": "POST a JSON object to /__sandbox__/faults: the next `count` API calls fail so, then it answers normally",
    "fields": {
        "status": "the HTTP status to answer with (required), e.g. 429, 500, 503",
        "count": "how many of the next calls fail (default 1)",
        "retry_after": "the Retry-After header to send, as a string of seconds (optional)",
        "delay": "seconds to wait before answering (default 0)",
    },
    "example": {"status": 429, "count": 2, "retry_after": "3"},
}


@index.get("/")
def home() -> dict[str, Any]:
    from service.devtools.usercom_sandbox import API_PREFIX  # the package imports this module

    root = request.host_url.rstrip("/")
    keep = current_app.extensions["sandbox"].keep_requests
    kept = "every call" if keep is None else f"the newest {keep} calls"
    endpoints = sorted(
        f"{method} {rule.rule}"
        for rule in current_app.url_map.iter_rules()
        if rule.rule.startswith(API_PREFIX)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"})
    )
    return {
        "name": "User.com sandbox (a relay dev tool, not User.com)",
        "api": {
            "base_url": f"{root}{API_PREFIX}",
            "prefix": API_PREFIX,
            "auth": "Authorization: Token <key> (USERCOM_API_KEY, as `relay dev` prints it)",
            "endpoints": endpoints,
        },
        "control": {**CONTROL, "GET /__sandbox__/requests": CONTROL["GET /__sandbox__/requests"].format(calls=kept)},
        "faults": {
            **FAULTS,
            "curl": (
                f"curl -sS -X POST {root}/__sandbox__/faults -H 'Content-Type: application/json' "
                """-d '{"status": 429, "count": 2, "retry_after": "3"}'"""
            ),
        },
    }
