"""The user an invalid payload's dead letter is filed under: read where each source's events carry it."""

from __future__ import annotations

from typing import Any

import pytest

from service.intake import named_user


@pytest.mark.parametrize(
    ("payload", "user"),
    [
        ({"data": {"object": {"metadata": {"user_id": "u1"}, "customer": 5}}}, "u1"),  # Stripe
        ({"data": {"custom_data": {"user_id": 42}, "items": "not a list"}}, "42"),  # Paddle
        ({"meta": {"custom_data": {"user_id": " u3 "}}, "data": []}, "u3"),  # Lemon Squeezy
        ({"type": "user.updated", "data": {"user_id": "u4"}}, "u4"),  # Standard Webhooks
        ({"data": [{"metadata": {"user_id": "u5"}}]}, "u5"),  # inside a list
        ({"data": {"object": {"metadata": {"user_id": ".."}}}}, None),  # never a user id
        ({"data": {"object": {"metadata": {"user_id": {"nested": "u6"}}}}}, None),
        ({"a": {"b": {"c": {"d": {"user_id": "too-deep"}}}}}, None),
        ([1, "x", None], None),
        ("not an object", None),
    ],
)
def test_the_user_a_payload_names_as_far_as_it_can_be_read(payload: Any, user: str | None) -> None:
    assert named_user(payload, "user_id") == user
