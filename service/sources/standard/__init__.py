"""Standard Webhooks: signature and the generic user.updated event."""

from service.sources.standard.source import SPEC

__all__ = ["SPEC"]
