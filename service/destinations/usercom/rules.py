"""User.com's documented rules for the values of an update (shared/seeds), checked before sending.

A value that breaks one is left out of the update and reported (service/destinations/dropped.py);
User.com would otherwise refuse the whole update with a 400:
- email: the shape name@domain.tld (EMAIL);
- phone_number: E.164, "+" then 7 to 15 digits (E164);
- first_name, last_name: at most 40 characters (NAME_MAX_LENGTH);
- gender: 1 unknown, 2 male, 3 female; status: 1 visitor, 2 user (the words User.com reads them back
  as are sent as their codes);
- unsubscribed, notifications: booleans; score: an integer; every other one: a string;
- a standard attribute User.com does not list (STANDARD_ATTRIBUTES) is not sent.
A null value clears the attribute and is always sent.
"""

from __future__ import annotations

import json
from typing import Any

from service.core.attributes import E164, EMAIL, NAME_MAX_LENGTH, STANDARD_ATTRIBUTES
from service.destinations.dropped import DroppedValue

# Choices User.com takes as codes on write, and reads back as these words (shared/seeds/README.md).
CHOICES = {"gender": {"unknown": 1, "male": 2, "female": 3}, "status": {"visitor": 1, "user": 2}}
BOOLEANS = frozenset({"unsubscribed", "notifications"})


def _code(name: str, value: Any) -> Any:
    """A choice's code for the word User.com reads it back as; any other value as it is."""
    return CHOICES[name].get(value, value) if name in CHOICES and isinstance(value, str) else value


def _problem(name: str, value: Any) -> str | None:
    if name not in STANDARD_ATTRIBUTES:
        return "unknown_attribute"
    if value is None:
        return None
    if name in CHOICES:  # an int code (2.0 would go out as "2.0", which a choice field refuses)
        valid = type(value) is int and value in CHOICES[name].values()
        return None if valid else "invalid_choice"
    if name in BOOLEANS:
        return None if isinstance(value, bool) else "not_a_boolean"
    if name == "score":
        return None if isinstance(value, int) and not isinstance(value, bool) else "not_an_integer"
    if not isinstance(value, str):
        return "not_a_string"
    if name == "email" and not EMAIL.match(value):
        return "invalid_email"
    if name == "phone_number" and not E164.match(value):
        return "invalid_phone"
    if name in ("first_name", "last_name") and len(value) > NAME_MAX_LENGTH:
        return "name_too_long"
    return None


def screen(standard: dict[str, Any]) -> tuple[dict[str, Any], list[DroppedValue]]:
    """The standard attributes User.com accepts (a choice's word as its code), and those left out
    (with the rule each breaks)."""
    kept: dict[str, Any] = {}
    dropped: list[DroppedValue] = []
    for name, raw in standard.items():
        value = _code(name, raw)
        problem = _problem(name, value)
        if problem is None:
            kept[name] = value
        else:
            dropped.append(DroppedValue(name, problem))
    return kept, dropped


def missing_custom_attributes(status: int | None, body: str | None, custom: dict[str, Any]) -> list[str]:
    """The custom attributes a v2 update's 400 names as not existing yet in the account; [] when the
    400 is about anything else (every field it names must be one of ours, each said not to exist)."""
    if status != 400 or not body or not custom:
        return []
    try:
        errors = json.loads(body)
    except ValueError:
        return []
    if not isinstance(errors, dict) or not errors:
        return []
    for name, messages in errors.items():
        text = " ".join(messages) if isinstance(messages, list) else str(messages)
        if name not in custom or "not exist" not in text:
            return []
    return list(errors)


def perhaps_custom_attributes(status: int | None, body: str | None, custom: dict[str, Any]) -> bool:
    """Whether a v2 update's 400 may be about custom attributes not created yet, in words
    missing_custom_attributes does not know: any 400 of an update carrying custom attributes, unless
    it names standard fields (or tags) only."""
    if status != 400 or not custom:
        return False
    try:
        errors = json.loads(body or "")
    except ValueError:
        return True
    if not isinstance(errors, dict) or not errors:
        return True
    return not all(name in STANDARD_ATTRIBUTES or name == "tags" for name in errors)
