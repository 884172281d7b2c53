"""The one table of destinations. Adding one: its package under service/destinations/, a line
here, and the docs."""

from __future__ import annotations

from service.destinations import usercom, userkit
from service.destinations.base import DestinationSpec

DESTINATIONS: dict[str, DestinationSpec] = {spec.name: spec for spec in (usercom.SPEC, userkit.SPEC)}
NAMES = tuple(DESTINATIONS)  # the first is the default
