"""The User.com destination: the calls of shared/seeds (update by our id; create first when
User.com does not know the user yet), over workers/http_api.py."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from service.metrics import USERCOM_REQUESTS, USERCOM_SECONDS
from workers.destination import Rejected
from workers.http_api import HttpApi
from workers.ratelimit import RateLimiter


def _endpoint(method: str, path: str) -> str:
    """A low-cardinality name for a call: the path with ids taken out."""
    first = path.strip("/").split("/")[0]
    if first == "users-by-id":
        return f"{method} /users-by-id/:id/"
    rest = path.strip("/").split("/", 1)[1] if "/" in path.strip("/") else ""
    return f"{method} /users/{rest}/" if rest and not rest.isdigit() else f"{method} /users/:id/"


class UsercomClient:
    """The User.com destination (the default)."""

    name = "usercom"

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        connect_timeout: float,
        read_timeout: float,
        pool_size: int = 10,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._api = HttpApi(
            base_url=base_url,
            headers={
                "Authorization": f"Token {api_key}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
            secrets=[api_key],
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            requests=USERCOM_REQUESTS,
            seconds=USERCOM_SECONDS,
            pool_size=pool_size,
            limiter=limiter,
        )

    def accepts(self, standard: dict[str, Any], custom: dict[str, Any], tags: list[str]) -> bool:
        return bool(standard or custom or tags)

    def send(self, user_id: str, standard: dict[str, Any], custom: dict[str, Any], tags: list[str]) -> None:
        """Update by our own id; create the user first when User.com does not know it yet."""
        body: dict[str, Any] = {**standard, **custom}
        if tags:
            body["tags"] = tags
        path = f"/users-by-id/{quote(user_id, safe='')}/"
        if self._call("PUT", path, body, allow_404=True) is not None:
            return
        self._call("POST", "/users/update_or_create/", {**standard, "user_id": user_id})
        if self._call("PUT", path, body, allow_404=True) is None:
            # e.g. an id containing "/": User.com decodes it before routing and never finds the user.
            raise Rejected(f"PUT {path} -> 404 right after update_or_create: id not addressable", status=404)

    def _call(self, method: str, path: str, body: dict[str, Any], *, allow_404: bool = False) -> Any:
        return self._api.call(method, path, body, endpoint=_endpoint(method, path), allow_404=allow_404)
