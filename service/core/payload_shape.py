"""Bounds on what a webhook body may hold, checked once it is parsed and before anything reads
it: how deep it nests, how long and well-formed its strings are, how large its numbers are.
A body outside them is refused (422 invalid_payload) rather than breaking a later step (a
RecursionError in the dead-letter queue, a lone surrogate Redis cannot encode, NaN sent on)."""

from __future__ import annotations

import math
from typing import Any

MAX_DEPTH = 32  # provider events nest about 8 levels
MAX_STRING = 32 * 1024  # characters, for keys and values
MAX_NUMBER = 2**53  # JSON's exact integers; timestamps, amounts and counts are far below


def _string_problem(text: str, surrogates: bool) -> str | None:
    if len(text) > MAX_STRING:
        return f"holds a string longer than {MAX_STRING} characters"
    if not surrogates:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "holds a string that is not valid Unicode (a lone surrogate)"
    return None


def _number_problem(value: float) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return "holds NaN or Infinity"
    if abs(value) > MAX_NUMBER:
        return "holds a number beyond +-2^53"
    return None


def may_hold_surrogates(raw: bytes) -> bool:
    """A lone surrogate can only come from a `\\uD800`-`\\uDFFF` escape (raw bytes are UTF-8)."""
    return b"\\ud" in raw or b"\\uD" in raw


def shape_problem(payload: Any, *, surrogates: bool = True) -> str | None:
    """Why the parsed body is outside the bounds (one short sentence), or None. Iterative: a
    deep body cannot exhaust the stack here. `surrogates`: whether strings need checking for
    lone surrogates (see may_hold_surrogates). Only containers are stacked, one level at a time."""
    level: list[Any] = [payload]
    depth = 0
    while level:
        depth += 1
        deeper: list[Any] = []
        for value in level:
            items = value.values() if type(value) is dict else value if type(value) is list else (value,)
            if type(value) is dict:
                problem = next((p for key in value if (p := _string_problem(key, surrogates))), None)
                if problem:
                    return problem
            for item in items:
                kind = type(item)
                if kind is dict or kind is list:
                    if item:
                        deeper.append(item)
                elif kind is str:
                    problem = _string_problem(item, surrogates)
                    if problem:
                        return problem
                elif kind is int or kind is float:
                    problem = _number_problem(item)
                    if problem:
                        return problem
        if deeper and depth >= MAX_DEPTH:
            return f"nests deeper than {MAX_DEPTH} levels"
        level = deeper
    return None
