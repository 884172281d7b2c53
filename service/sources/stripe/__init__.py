"""Stripe: signature, envelope, schemas and extractors."""

from service.sources.stripe.source import SPEC

__all__ = ["SPEC"]
