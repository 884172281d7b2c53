"""Lemon Squeezy: signature, envelope, schemas and extractors."""

from service.sources.lemonsqueezy.source import SPEC

__all__ = ["SPEC"]
