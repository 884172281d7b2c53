"""The Flask application: wiring only. Views translate HTTP to plain calls and back."""

from __future__ import annotations

from flask import Flask, Response
from redis import Redis

from service.config import Settings
from service.intake import Intake
from service.operator import Operator
from service.sources.registry import build_source
from service.store.connection import web_redis
from service.store.durability import OFF, DurableAck
from service.store.ledger import Store
from service.web import admin, console_app, errors, headers, ops, webhooks
from service.web.openapi import build_spec


class RelayApp(Flask):
    def make_default_options_response(self) -> Response:
        """OPTIONS: 204 naming the route's methods in `Allow`. Flask's own answer is 200 with an empty
        text/html body, the one answer of the app that is neither JSON nor the console."""
        response = super().make_default_options_response()
        response.status_code = 204
        response.headers.pop("Content-Type", None)
        return response


def build_app(settings: Settings | None = None, *, redis: Redis | None = None) -> Flask:
    settings = settings or Settings.from_env(role="web")
    redis = redis if redis is not None else web_redis(settings.redis_url)
    app = RelayApp("relay")
    app.url_map.converters["user_id"] = admin.UserIdConverter
    # No 308 from "//" to "/": Werkzeug's answer is an HTML page, its Location built from the Host header.
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = errors.MAX_BODY_BYTES + 1  # the byte that tells a chunked body too large
    app.json.sort_keys = False  # type: ignore[attr-defined]
    store = Store.from_settings(redis, settings)
    durable = DurableAck(settings.redis_url if settings.durable_ack != OFF else None, settings.durable_ack)
    app.extensions["relay.redis"] = redis
    app.extensions["relay.durable"] = durable
    app.extensions["relay.intake"] = {
        name: Intake(
            build_source(name, settings.source(name)),
            store,
            settings.mapping,
            settings.identity_key,
            max_clock_skew=settings.max_clock_skew_seconds,
            trusted_identity_fields=settings.trusted_identity_fields,
            durable=durable,
        )
        for name in settings.webhook_sources
    }
    app.extensions["relay.operators"] = {
        name: Operator(store.for_destination(name), settings) for name in settings.destinations
    }
    app.extensions["relay.admin_token"] = settings.admin_token
    app.extensions["relay.settings"] = settings
    app.extensions["relay.openapi"] = build_spec()
    for blueprint in (webhooks.bp, ops.bp, admin.bp, console_app.bp):
        app.register_blueprint(blueprint)
    errors.register(app)
    headers.register(app)
    return app
