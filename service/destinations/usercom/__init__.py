"""User.com (the default destination): the update calls of shared/seeds."""

from __future__ import annotations

from service.destinations.base import DestinationSettings, DestinationSpec, Limiter
from service.destinations.usercom.client import UsercomClient


def client(settings: DestinationSettings, limiter: Limiter | None) -> UsercomClient:
    return UsercomClient(
        base_url=settings.api_url,
        api_key=settings.credential,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        limiter=limiter,
    )


SPEC = DestinationSpec(
    name="usercom",
    title="User.com",
    url_env="USERCOM_API_URL",
    url_example="https://acme.user.com/api/public",
    credential_env="USERCOM_API_KEY",
    rate_env="USERCOM_RATE_LIMIT",
    burst_env="USERCOM_BURST",
    in_flight_env="USERCOM_MAX_IN_FLIGHT",
    client=client,
)
