"""What operators and the platform poll: /status, /metrics, /openapi.json, /healthz, /readyz."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from service.ops.metrics import process_metrics
from service.ops.shared_state import shared_state_metrics
from service.ops.status import collect_status

bp = Blueprint("ops", __name__)


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
    current_app.extensions["relay.redis"].ping()  # a RedisError is a 503 (service/web/errors.py)
    current_app.extensions["relay.durable"].check()  # RELAY_DURABLE_ACK honoured (nothing to check when off)
    return {"status": "ready"}
