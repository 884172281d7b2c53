"""UserKit: `POST /v1/users/<user_id>` (seed userkit_update_user.txt)."""

from __future__ import annotations

from service.destinations.base import DestinationSettings, DestinationSpec, Limiter
from service.destinations.userkit.client import UserKitClient


def client(settings: DestinationSettings, limiter: Limiter | None) -> UserKitClient:
    return UserKitClient(
        base_url=settings.api_url,
        app_secret=settings.credential,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        limiter=limiter,
    )


SPEC = DestinationSpec(
    name="userkit",
    title="UserKit",
    url_env="USERKIT_API_URL",
    url_example="https://api.userkit.io",
    url_default="https://api.userkit.io",
    credential_env="USERKIT_APP_SECRET",
    rate_env="USERKIT_RATE_LIMIT",
    burst_env="USERKIT_BURST",
    in_flight_env="USERKIT_MAX_IN_FLIGHT",
    client=client,
)
