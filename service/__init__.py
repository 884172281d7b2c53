"""relay: billing webhooks in, CRM user updates out. `create_app()` is what gunicorn serves
(service.web.app is the composition root); the rooms are drawn in docs/architecture.md."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask
    from redis import Redis

    from service.config import Settings


def create_app(settings: Settings | None = None, *, redis: Redis | None = None) -> Flask:
    from service.web.app import build_app

    return build_app(settings, redis=redis)
