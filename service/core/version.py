"""The installed relay's version: in /status, the OpenAPI document, `relay --version` and the
User-Agent of its API calls."""

from __future__ import annotations

from importlib import metadata


def version() -> str:
    try:
        return metadata.version("relay")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"
