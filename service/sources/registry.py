"""The one table of webhook sources. Adding a provider: its package under service/sources/, a
line here, its events in the mapping file, and the docs."""

from __future__ import annotations

from service.sources import lemonsqueezy, paddle, standard, stripe
from service.sources.base import Source, SourceSettings, SourceSpec

SOURCES: dict[str, SourceSpec] = {
    spec.name: spec for spec in (stripe.SPEC, standard.SPEC, paddle.SPEC, lemonsqueezy.SPEC)
}


def build_source(name: str, settings: SourceSettings) -> Source:
    return SOURCES[name].build(settings)
