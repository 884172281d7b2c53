"""Headers every answer carries: no framing (the console's buttons under another page's clicks), no
script or style but the console's own files, no content-type guessing, no referrer, and nothing of the
admin API or console kept in a cache."""

from __future__ import annotations

from flask import Flask, Response, request

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
NOT_CACHED = ("/admin", "/console", "/status")


def secure(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith(NOT_CACHED):
        response.headers["Cache-Control"] = "no-store"
    return response


def register(app: Flask) -> None:
    app.after_request(secure)
