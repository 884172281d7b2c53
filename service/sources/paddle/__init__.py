"""Paddle Billing: signature, envelope, schemas and extractors."""

from service.sources.paddle.source import SPEC

__all__ = ["SPEC"]
