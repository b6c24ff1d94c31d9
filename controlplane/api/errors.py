"""The one error middleware: every failure of a request becomes the JSON error shape.

``{"error": {"code": "<stable_code>", "message": "<human text>", "details": {...}}}``

=========================================  ======  ===========================================
raised                                      status  code
=========================================  ======  ===========================================
``controlplane.errors.ControlPlaneError``   own     own (``bad_request``, ``bad_json``, ...)
``policies.errors.PolicyValidationError``   422     ``invalid_policy`` (``details.violations``)
aiohttp ``HTTPException`` (>= 400)          own     ``not_found``, ``method_not_allowed``, ...
``sessions.errors.BackendUnavailable``      503     ``backend_unavailable`` (a disk, Redis)
anything else                               500     ``internal`` (generic message + ``ref``)
=========================================  ======  ===========================================

Unexpected exceptions are logged here, once, with their traceback and a short reference that
the response also carries; their text never reaches the client.

Requests that aiohttp refuses before any route runs (a request line or header over 8190 bytes,
malformed HTTP) never reach the middleware: aiohttp answers a plain-text 400 and logs the
exception at ERROR, whose message quotes the first 100 bytes of the offending line — a
``?token=`` or an ``Authorization`` value included. :class:`ProtocolErrorRedaction` (installed
on the ``aiohttp.server`` logger by :func:`install_log_redaction`) logs those as one INFO line
naming the error type only: no request bytes in the log, and no ERROR flood a client can cause.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from controlplane.errors import ControlPlaneError, TooManyRequests, Unauthorized, Unavailable
from policies.errors import PolicyValidationError
from sessions.errors import BackendUnavailable

__all__ = [
    "HTTP_CODES",
    "WWW_AUTHENTICATE",
    "ProtocolErrorRedaction",
    "error_middleware",
    "error_response",
    "install_log_redaction",
]

log = logging.getLogger(__name__)

# Stable codes for aiohttp's own HTTP exceptions (router misses, its body limit, ...).
HTTP_CODES: Final[dict[int, str]] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    409: "conflict",
    411: "length_required",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
    431: "headers_too_large",
    500: "internal",
    501: "not_implemented",
    503: "unavailable",
}

WWW_AUTHENTICATE: Final = 'Bearer realm="controlplane"'

# Headers of an HTTPException worth keeping on the JSON answer.
_KEPT_HEADERS: Final = ("Allow", "Retry-After", "WWW-Authenticate")


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The JSON error shape as a response."""
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return web.json_response(body, status=status, headers=headers)


def _from_control_plane(exc: ControlPlaneError) -> web.Response:
    headers: dict[str, str] = {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    elif isinstance(exc, Unavailable | TooManyRequests):
        headers["Retry-After"] = str(exc.details.get("retry_after_s", 1))
    return web.json_response(exc.as_body(), status=exc.status, headers=headers or None)


def _from_policy(exc: PolicyValidationError) -> web.Response:
    details: dict[str, Any] = {"violations": [v.as_dict() for v in exc.violations]}
    if exc.policy_id:
        details["policy_id"] = exc.policy_id
    count = len(exc.violations)
    message = f"policy is invalid ({count} violation{'s' if count != 1 else ''}): {exc}"
    return error_response(422, "invalid_policy", message, details)


def _from_http(request: web.Request, exc: web.HTTPException) -> web.Response:
    status = exc.status
    code = HTTP_CODES.get(status, "http_" + str(status))
    details: dict[str, Any] = {}
    if status == 404:
        message = f"no such endpoint: {request.method} {request.path[:200]}"
    elif status == 405 and isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = sorted(exc.allowed_methods)
        details["allowed"] = allowed
        message = f"method {request.method} is not allowed here (allowed: {', '.join(allowed)})"
    elif status == 413 and isinstance(exc, web.HTTPRequestEntityTooLarge):
        limit = request.client_max_size  # aiohttp's own body limit
        details["limit_bytes"] = limit
        message = f"request body is over the {limit}-byte limit"
    else:
        message = exc.reason
    headers = {name: exc.headers[name] for name in _KEPT_HEADERS if name in exc.headers}
    return error_response(status, code, message, details, headers or None)


def _internal(request: web.Request) -> web.Response:
    ref = secrets.token_hex(4)
    log.exception("unhandled error in %s %s (ref %s)", request.method, request.path, ref)
    return error_response(
        500, "internal", f"internal error (ref {ref}); see the server log", {"ref": ref}
    )


def _to_response(request: web.Request, exc: Exception) -> web.Response:
    if isinstance(exc, ControlPlaneError):
        if exc.status >= 500 and not isinstance(exc, Unavailable):
            log.error("%s %s failed: %s (%s)", request.method, request.path, exc.code, exc.message)
        return _from_control_plane(exc)
    if isinstance(exc, PolicyValidationError):
        return _from_policy(exc)
    if isinstance(exc, web.HTTPException):
        return _from_http(request, exc)
    if isinstance(exc, BackendUnavailable):  # e.g. a read that flushes the log first while
        log.warning("%s %s: %s", request.method, request.path, exc)  # the disk is full
        return _from_control_plane(Unavailable(str(exc), code="backend_unavailable"))
    return _internal(request)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every exception raised below it to the JSON error shape (see the module table)."""
    try:
        return await handler(request)
    except Exception as exc:
        if isinstance(exc, web.HTTPException) and exc.status < 400:
            raise  # redirects and the like are answers, not errors
        if request.writer.output_size > 0:
            raise  # a response (a WebSocket, a stream) is already on the wire: too late for JSON
        return _to_response(request, exc)


class ProtocolErrorRedaction(logging.Filter):
    """Rewrites aiohttp's log record of a refused malformed request: INFO, error type and peer
    only (the exception's message quotes request bytes, secrets included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "refused a malformed HTTP request from %s: %s (HTTP %s)"
            record.args = (peer, type(exc).__name__, exc.code)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Install :class:`ProtocolErrorRedaction` on ``aiohttp.server`` (once; idempotent)."""
    target = logger or logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ProtocolErrorRedaction) for f in target.filters):
        target.addFilter(ProtocolErrorRedaction())
