"""relay web side: `create_app()` is the composition root gunicorn serves."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask
    from redis import Redis

    from service.config import Settings


def create_app(settings: Settings | None = None, *, redis: Redis | None = None) -> Flask:
    from service.app import build_app

    return build_app(settings, redis=redis)
