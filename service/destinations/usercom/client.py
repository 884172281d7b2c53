"""The User.com destination: the calls of shared/seeds, over service/destinations/http_api.py.

A user is updated by User.com's own id (`PUT /users/<id>/`, API version 2) once the relay knows
it, else by our id (`PUT /users-by-id/<user_id>/`); a user User.com does not know yet is
created (`POST /users/update_or_create/`, which answers its id) and then updated by that id.
The ids learned are kept in Redis (the destination's memory of the user: read with the user's lease,
written with the outcome); a 404 on one clears it. Updating by User.com's id also
reaches users whose own id User.com cannot route (e.g. one containing "/").

Custom attributes must exist in the account before the v2 update sends them (its 400 names those
that do not), while the update by our id creates them: on that 400 the update is sent by our id
instead, and the attribute is remembered as missing until then (later updates carrying it go by
our id first). Values User.com's rules would refuse are left out and reported (rules.py).

Within one send, a 404 by our id stands until update_or_create answers that it made the user: the
update by our id is not asked again meanwhile (a stale User.com id for a user whose id has "/" asked
it three times), and an attribute left out is reported once, when the update without it went out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from service.destinations.base import Limiter, Rejected
from service.destinations.dropped import DroppedValue
from service.destinations.http_api import ApiClient, HttpApi
from service.destinations.usercom.rules import missing_custom_attributes, perhaps_custom_attributes, screen
from service.ops.metrics import USERCOM_REQUESTS, USERCOM_SECONDS
from service.store import keys


def _endpoint(method: str, path: str) -> str:
    """A low-cardinality name for a call: the path with ids taken out."""
    first = path.strip("/").split("/")[0]
    if first == "users-by-id":
        return f"{method} /users-by-id/:id/"
    rest = path.strip("/").split("/", 1)[1] if "/" in path.strip("/") else ""
    return f"{method} /users/{rest}/" if rest and not rest.isdigit() else f"{method} /users/:id/"


V2 = {"Accept": "*/*; version=2"}  # what PUT /users/<id>/ requires
log = logging.getLogger("relay.usercom")


@dataclass
class _Send:
    """What one send() learned of the user (per call: a batch's threads share the client)."""

    not_by_our_id: bool = False  # PUT /users-by-id/ answered 404 and nothing since made the user


class UsercomClient(ApiClient):
    """The User.com destination (the default)."""

    name = "usercom"
    memory_expires = True  # its id for the user: found again by our id when forgotten

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        connect_timeout: float,
        read_timeout: float,
        pool_size: int = 10,
        limiter: Limiter | None = None,
    ) -> None:
        super().__init__(
            HttpApi(
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
        )
        self._missing: set[str] = set()  # custom attributes User.com said do not exist (yet)

    def accepts(self, standard: dict[str, Any], custom: dict[str, Any], tags: list[str]) -> bool:
        return bool(standard or custom or tags)

    def memory_key(self, user_id: str) -> str:
        return keys.usercom_id(user_id)  # User.com's id for the user, learned from its answers

    def send(
        self, user_id: str, standard: dict[str, Any], custom: dict[str, Any], tags: list[str], memory: str | None
    ) -> str | None:
        """Update the user; create it first when User.com does not know it yet. Returns User.com's
        id for the user when newly learned, '' when the one known is no longer valid."""
        standard, dropped = screen(standard)
        self._left_out(dropped)
        if not self.accepts(standard, custom, tags):
            return None  # nothing User.com would take is left
        body: dict[str, Any] = {**standard, **custom}
        if tags:
            body["tags"] = tags
        learned: str | None = None
        this = _Send()
        if memory and memory.isdigit():
            if self._update_known(this, memory, user_id, body, custom) is not None:
                return None
            learned = ""  # deleted or merged in User.com: forget it
        answer = self._put_by_custom_id(this, user_id, body, custom)
        if answer is not None:
            return _usercom_id(answer) or learned
        created = self._call("POST", "/users/update_or_create/", {**standard, "user_id": user_id})
        # Found there by our id: the 404 by our id was its route ("/"), not its absence. Made now: ask again.
        this.not_by_our_id = this.not_by_our_id and isinstance(created, dict) and created.get("created") is False
        usercom_id = _usercom_id(created)
        if usercom_id is None or self._update_known(this, usercom_id, user_id, body, custom) is None:
            raise Rejected(f"user {user_id!r}: 404 right after update_or_create", status=404)
        return usercom_id

    def mass_update_standard(self, attribute: str, value: str, ids: list[int]) -> Any:
        """One standard attribute set to one value for many users by User.com id (mass_update.py plans it)."""
        return self._call(
            "PUT", "/users/mass_update_standard_attributes/", {"ids": ids, "attribute": attribute, "value": value}
        )

    def _update_known(
        self, this: _Send, usercom_id: str, user_id: str, body: dict[str, Any], custom: dict[str, Any]
    ) -> Any:
        """The v2 update by User.com's id; custom attributes that do not exist yet go by our id, which
        creates them. None when User.com does not know the user by either."""
        missing = [name for name in custom if name in self._missing]
        if not missing:
            try:
                return self._call("PUT", f"/users/{usercom_id}/", body, allow_404=True, headers=V2)
            except Rejected as exc:
                missing = missing_custom_attributes(exc.status, exc.body, custom)
                if not missing and perhaps_custom_attributes(exc.status, exc.body, custom):
                    # In words not known here: sent by our id, which creates them (a refusal of
                    # anything else is refused there too, and stays one).
                    answer = self._put_by_custom_id(this, user_id, body, custom)
                    if answer is None:
                        raise
                    return answer
                if not missing:
                    raise
                self._missing.update(missing)
                log.info("custom attributes %s do not exist in User.com yet: sending by user id", missing)
        answer = self._put_by_custom_id(this, user_id, body, custom)
        if answer is not None:
            return answer
        # Not reachable by our id (e.g. it contains "/"): the rest goes out, the new attributes are reported
        # once it went (a 404 here is a stale id: the send goes on, and reports what it leaves out then).
        rest = {name: value for name, value in body.items() if name not in missing}
        answer = self._call("PUT", f"/users/{usercom_id}/", rest, allow_404=True, headers=V2)
        if answer is not None:
            self._left_out([DroppedValue(name, "custom_attribute_missing") for name in missing], also=True)
        return answer

    def _put_by_custom_id(self, this: _Send, user_id: str, body: dict[str, Any], custom: dict[str, Any]) -> Any:
        """The update by our id (None: a 404, now or earlier in this send); it creates missing custom attributes."""
        if this.not_by_our_id:
            return None
        answer = self._call("PUT", f"/users-by-id/{quote(user_id, safe='')}/", body, allow_404=True)
        if answer is None:
            this.not_by_our_id = True
        else:
            self._missing.difference_update(custom)  # they exist now
        return answer

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any],
        *,
        allow_404: bool = False,
        headers: dict[str, str] | None = None,
    ) -> Any:
        endpoint = _endpoint(method, path)
        return self._api.call(method, path, body, endpoint=endpoint, allow_404=allow_404, headers=headers)


def _usercom_id(answer: Any) -> str | None:
    """User.com's id for a user, from its answer about it."""
    usercom_id = answer.get("id") if isinstance(answer, dict) else None
    if not isinstance(usercom_id, int) or isinstance(usercom_id, bool):
        return None
    return str(usercom_id)
