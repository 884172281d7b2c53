"""The errors the relay's operations end in. Each has a stable `code`; none knows HTTP
(service/web/errors.py gives each its status, in one table). Messages never include secrets or
request bodies.

    RelayError
    ├── RequestError                  the caller's request cannot be taken as it is
    │   ├── UnsupportedMediaType      unsupported_media_type
    │   ├── MalformedJson             malformed_json
    │   ├── MalformedRequest          malformed_request (not HTTP/1.1 the server can read: a chunk size)
    │   ├── PayloadTooLarge           payload_too_large
    │   ├── SignatureError            no configured secret vouches for the request
    │   │   ├── SignatureMissing      signature_missing
    │   │   ├── SignatureInvalid      signature_invalid
    │   │   └── SignatureExpired      signature_expired
    │   ├── InvalidPayload            invalid_payload (kept in the dead-letter queue)
    │   ├── InvalidRequest            invalid_request
    │   ├── Unauthorized              unauthorized
    │   └── Conflict                  still_invalid | not_mapped | unresolved_identity (the operation's own code)
    ├── NotFound                      not_found
    │   ├── SourceNotConfigured       source_not_configured
    │   └── AdminDisabled             admin_disabled
    └── StoreUnavailable              redis_unavailable (Redis errors become this, at the web boundary)
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError


class RelayError(Exception):
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


class RequestError(RelayError):
    code = "invalid_request"


class UnsupportedMediaType(RequestError):
    code = "unsupported_media_type"


class MalformedJson(RequestError):
    code = "malformed_json"


class MalformedRequest(RequestError):
    code = "malformed_request"


class IncompleteBody(RequestError):
    code = "incomplete_body"


class PayloadTooLarge(RequestError):
    code = "payload_too_large"


class SignatureError(RequestError):
    code = "signature_invalid"


class SignatureMissing(SignatureError):
    code = "signature_missing"


class SignatureInvalid(SignatureError):
    code = "signature_invalid"


class SignatureExpired(SignatureError):
    code = "signature_expired"


class InvalidPayload(RequestError):
    code = "invalid_payload"


class InvalidRequest(RequestError):
    code = "invalid_request"


class Unauthorized(RequestError):
    code = "unauthorized"


class Conflict(RequestError):
    def __init__(self, code: str, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details=details)
        self.code = code


class NotFound(RelayError):
    code = "not_found"


class SourceNotConfigured(NotFound):
    code = "source_not_configured"


class AdminDisabled(NotFound):
    code = "admin_disabled"


class StoreUnavailable(RelayError):
    code = "redis_unavailable"


def load_request(schema: Schema, data: Any) -> Any:
    """A request's parameters through their schema: marshmallow's ValidationError becomes
    InvalidRequest here (a webhook payload's becomes InvalidPayload in service.intake)."""
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise InvalidRequest("invalid parameters", details=exc.messages) from None
