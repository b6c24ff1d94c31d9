"""Errors of the service layer, mapped to HTTP by one middleware (controlplane.api.errors).

Tree::

    ControlPlaneError (500, internal)          root; carries code, message, details
    ├── BadRequest (400, bad_request)          malformed input (JSON, query, types)
    │   └── ValidationFailed (422, invalid_policy)   a policy violates a rule (details.violations)
    ├── Unauthorized (401, unauthorized)       missing or unknown bearer token
    ├── Forbidden (403, forbidden)             the token's role is too low or the action not allowed
    ├── NotFound (404, not_found)              unknown session, policy, version, experiment
    ├── Conflict (409, version_conflict)       version regression or duplicate
    ├── PayloadTooLarge (413, payload_too_large)
    ├── TooManyRequests (429, rate_limited)    a token over a per-token limit; retry after
    └── Unavailable (503, unavailable)         not ready, shutting down, backend down; retryable

``retryable`` is True only for Unavailable. Secrets never go into messages or details.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BadRequest",
    "Conflict",
    "ControlPlaneError",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
]


class ControlPlaneError(Exception):
    status: ClassVar[int] = 500
    default_code: ClassVar[str] = "internal"
    retryable: ClassVar[bool] = False

    def __init__(
        self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.details = details or {}

    def as_body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class BadRequest(ControlPlaneError):
    status = 400
    default_code = "bad_request"


class ValidationFailed(BadRequest):
    status = 422
    default_code = "invalid_policy"


class Unauthorized(ControlPlaneError):
    status = 401
    default_code = "unauthorized"


class Forbidden(ControlPlaneError):
    status = 403
    default_code = "forbidden"


class NotFound(ControlPlaneError):
    status = 404
    default_code = "not_found"


class Conflict(ControlPlaneError):
    status = 409
    default_code = "version_conflict"


class PayloadTooLarge(ControlPlaneError):
    status = 413
    default_code = "payload_too_large"


class TooManyRequests(ControlPlaneError):
    """``details.retry_after_s`` becomes the ``Retry-After`` header."""

    status = 429
    default_code = "rate_limited"


class Unavailable(ControlPlaneError):
    status = 503
    default_code = "unavailable"
    retryable = True
