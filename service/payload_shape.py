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


def _string_problem(text: str) -> str | None:
    if len(text) > MAX_STRING:
        return f"holds a string longer than {MAX_STRING} characters"
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


def shape_problem(payload: Any) -> str | None:
    """Why the parsed body is outside the bounds (one short sentence), or None. Iterative: a
    deep body cannot exhaust the stack here."""
    stack: list[tuple[Any, int]] = [(payload, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                return f"nests deeper than {MAX_DEPTH} levels"
            if isinstance(value, dict):
                for key, item in value.items():
                    problem = _string_problem(key)
                    if problem:
                        return problem
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            problem = _string_problem(value)
            if problem:
                return problem
        elif isinstance(value, int | float) and not isinstance(value, bool):
            problem = _number_problem(value)
            if problem:
                return problem
    return None
