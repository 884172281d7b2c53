"""The Flask application: wiring only. Views translate HTTP to plain calls and back."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from redis import Redis
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException

from service.admin import bp as admin_bp
from service.config import SOURCE_SECRETS, Settings
from service.errors import PayloadTooLarge, RelayError, SourceNotConfigured, StoreUnavailable
from service.ingest import Ingest
from service.metrics import process_metrics, shared_state_metrics
from service.openapi import build_spec
from service.redis_client import web_redis
from service.replay import Operator
from service.sources import configured_sources
from service.status import collect_status
from service.store import Store

MAX_BODY_BYTES = 1024 * 1024  # Stripe events are far smaller; anything above is refused with 413
log = logging.getLogger(__name__)
bp = Blueprint("relay", __name__)


def build_app(settings: Settings | None = None, *, redis: Redis | None = None) -> Flask:
    settings = settings or Settings.from_env(role="web")
    redis = redis if redis is not None else web_redis(settings.redis_url)
    app = Flask("relay")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    store = Store.from_settings(redis, settings)
    app.extensions["relay.redis"] = redis
    app.extensions["relay.ingest"] = {
        name: Ingest(source, store) for name, source in configured_sources(settings).items()
    }
    app.extensions["relay.operators"] = {
        name: Operator(store.for_destination(name), settings) for name in settings.destinations
    }
    app.extensions["relay.admin_token"] = settings.admin_token
    app.extensions["relay.settings"] = settings
    app.extensions["relay.openapi"] = build_spec()
    app.register_blueprint(bp)
    app.register_blueprint(admin_bp)
    app.register_error_handler(RelayError, _relay_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(RedisError, _redis_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


def webhook(source: str) -> tuple[dict[str, Any], int]:
    ingest: Ingest | None = current_app.extensions["relay.ingest"].get(source)
    if ingest is None:
        setting = SOURCE_SECRETS[source]
        raise SourceNotConfigured(f"the {source} source is not configured: set {setting} to accept its webhooks")
    answer = ingest.handle(request.get_data(), request.content_type, request.headers)
    return answer.body, answer.status


for _name in SOURCE_SECRETS:  # one route per source, configured or not (then: 404 with the setting to set)
    bp.add_url_rule(f"/webhooks/{_name}", f"webhook_{_name}", webhook, defaults={"source": _name}, methods=["POST"])


@bp.get("/status")
def status() -> dict[str, Any]:
    return collect_status(current_app.extensions["relay.redis"], current_app.extensions["relay.settings"])


@bp.get("/metrics")
def metrics() -> Response:
    redis, settings = current_app.extensions["relay.redis"], current_app.extensions["relay.settings"]
    body = process_metrics() + shared_state_metrics(redis, settings)
    # The 0.0.4 text format: what every Prometheus version and scraper reads.
    return Response(body, content_type=CONTENT_TYPE_PLAIN_0_0_4)


@bp.get("/openapi.json")
def openapi() -> dict[str, Any]:
    return current_app.extensions["relay.openapi"]


@bp.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}  # process alive; deliberately independent of Redis


@bp.get("/readyz")
def readyz() -> dict[str, str]:
    try:
        current_app.extensions["relay.redis"].ping()
    except RedisError as exc:
        raise StoreUnavailable("redis is not reachable") from exc
    return {"status": "ready"}


def _relay_error(exc: RelayError) -> tuple[dict[str, Any], int]:
    return exc.body(), exc.status


def _redis_error(exc: RedisError) -> tuple[dict[str, Any], int]:
    log.error("redis unavailable: %s", type(exc).__name__)
    return _relay_error(StoreUnavailable("redis is not reachable; retry later"))


def _http_error(exc: HTTPException) -> tuple[dict[str, Any], int]:
    if exc.code == 413:
        return _relay_error(PayloadTooLarge(f"request body is larger than {MAX_BODY_BYTES} bytes"))
    code = (exc.name or "error").lower().replace(" ", "_")
    status = exc.code or 500
    return {"error": {"code": code, "message": exc.description or exc.name}}, status


def _unexpected_error(exc: Exception) -> tuple[dict[str, Any], int]:
    log.exception("unexpected error on %s %s", request.method, request.path)
    return {"error": {"code": "internal_error", "message": "internal error"}}, 500
