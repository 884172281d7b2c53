"""POST /webhooks/<source>: the view translates HTTP to service.intake and its outcome back."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, request

from service.core.errors import SourceNotConfigured
from service.intake import Intake, Outcome
from service.sources.registry import SOURCES

bp = Blueprint("webhooks", __name__)
STATUS = {
    Outcome.ACCEPTED: 202,
    Outcome.DUPLICATE: 200,
    Outcome.IGNORED: 200,
    Outcome.IDENTITY_CONFLICT: 202,
    Outcome.UNRESOLVED_IDENTITY: 202,
}


def webhook(source: str) -> tuple[dict[str, Any], int]:
    intake: Intake | None = current_app.extensions["relay.intake"].get(source)
    if intake is None:
        setting = SOURCES[source].secret_env
        raise SourceNotConfigured(f"the {source} source is not configured: set {setting} to accept its webhooks")
    received = intake.receive(request.get_data(), request.content_type, request.headers)
    return {"status": received.outcome.value, "event_id": received.event_id}, STATUS[received.outcome]


for _name in SOURCES:  # one route per source, configured or not (then: 404 with the setting to set)
    bp.add_url_rule(f"/webhooks/{_name}", f"webhook_{_name}", webhook, defaults={"source": _name}, methods=["POST"])
