"""The errors a webhook request can end in, each with a stable code and HTTP status.

Views raise these; one error handler turns them into `{"error": {"code", "message"}}`.
Messages never include secrets or request bodies.
"""

from __future__ import annotations

from typing import Any


class RelayError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}


class MalformedJson(RelayError):
    status, code = 400, "malformed_json"


class SignatureMissing(RelayError):
    status, code = 401, "signature_missing"


class SignatureInvalid(RelayError):
    status, code = 401, "signature_invalid"


class SignatureExpired(RelayError):
    status, code = 401, "signature_expired"


class PayloadTooLarge(RelayError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(RelayError):
    status, code = 415, "unsupported_media_type"


class InvalidPayload(RelayError):
    status, code = 422, "invalid_payload"


class StoreUnavailable(RelayError):
    status, code = 503, "redis_unavailable"


class InvalidRequest(RelayError):
    status, code = 400, "invalid_request"


class Unauthorized(RelayError):
    status, code = 401, "unauthorized"


class AdminDisabled(RelayError):
    status, code = 404, "admin_disabled"


class NotFound(RelayError):
    status, code = 404, "not_found"


class SourceNotConfigured(RelayError):
    status, code = 404, "source_not_configured"


class Conflict(RelayError):
    status = 409

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
