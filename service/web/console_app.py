"""The operator's console (`GET /console`): static HTML/JS/CSS shipped in the package, no build
step. It signs in with the admin token (kept in sessionStorage, sent as a bearer token to the
admin API; no cookies) and reads /status and /admin/*. `GET /` lists where to go."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint, Response, send_from_directory

STATIC = Path(__file__).with_name("console")  # the static files, shipped as package data

bp = Blueprint("console", __name__)


@bp.get("/")
def index() -> dict[str, Any]:
    return {
        "service": "relay",
        "links": {"console": "/console", "status": "/status", "metrics": "/metrics", "openapi": "/openapi.json"},
    }


@bp.get("/console")
def console() -> Response:
    return send_from_directory(STATIC, "index.html", max_age=0)


@bp.get("/console/<path:name>")
def asset(name: str) -> Response:
    return send_from_directory(STATIC, name, max_age=0)
