"""Reusable parameters (path and query, with the server's own patterns) and error responses of
the OpenAPI document."""

from __future__ import annotations

from typing import Any, Final

from controlplane.api.openapi_base import JSON, json_content, ref
from controlplane.audit.sources import INSTANT_PATTERN
from policies.limits import REASON_MAX_CHARS, RESERVED_IDS
from sessions.model import SessionState

__all__ = ["PARAMETERS", "RESPONSES", "SELECTOR_PATTERN"]


def _param(name: str, where: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": schema,
        "description": description,
    }


# The server's own rules as patterns both regex dialects (Python's, ECMA's) read alike: no
# \s (Python's also matches \x85, \x1c-\x1f; ECMA's \ufeff): whitespace spelled out as Python's
_WS = "\\t-\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
_S = f"[{_WS}]*"
_OPAQUE = f"[^{_WS}/\\x00-\\x1f\\x7f]{{1,256}}"
_SEL_KEY = "[A-Za-z0-9_.-]{1,63}"
_SEL_EDGE = f"[^,(){_WS}\\x00-\\x1f\\x7f]"
_SEL_VALUE = f"{_SEL_EDGE}(?:[^,()\\x00-\\x1f\\x7f]{{0,254}}{_SEL_EDGE})?"
_SEL_TERM = (
    f"{_S}{_SEL_KEY}(?:{_S}={_S}{_SEL_VALUE}"
    f"|[{_WS}]+in{_S}\\({_S}{_SEL_VALUE}{_S}(?:,{_S}{_SEL_VALUE}{_S})*\\)){_S}"
)
SELECTOR_PATTERN: Final = f"^(?:{_S}|{_SEL_TERM}(?:,{_SEL_TERM}){{0,63}})$"

PARAMETERS: dict[str, Any] = {
    "SessionId": _param(
        "session_id",
        "path",
        {"type": "string", "pattern": f"^{_OPAQUE}$"},
        "session: the control plane's id or the upstream's (Begin.id, Voice Agent session_id)",
    ),
    "UpstreamId": _param(
        "upstream_id",
        "query",
        {"type": "string", "pattern": f"^{_OPAQUE}$"},
        "only the session with this upstream id (Begin.id, Voice Agent session_id)",
    ),
    "PolicyId": _param(
        "policy_id",
        "path",
        {
            "type": "string",
            "pattern": "^[a-z0-9][a-z0-9-]{0,255}$",
            "not": {"enum": sorted(RESERVED_IDS)},
        },
        "policy",
    ),
    "ExperimentKey": _param(
        "key", "path", {"type": "string", "pattern": f"^{_OPAQUE}$"}, "experiment"
    ),
    "Selector": {
        **_param(
            "selector",
            "query",
            {"type": "string", "maxLength": 4096, "pattern": SELECTOR_PATTERN},
            "labels: k=v,k=v2 (repeated key = any of) or k in (a,b); at most 64 terms",
        ),
        "example": "region in (eu-west-1,eu-central-1),tenant=acme",
    },
    "Kind": _param("kind", "query", {"enum": ["streaming-v3", "voice-agent-v1"]}, "kind"),
    "State": _param(
        "state",
        "query",
        {"enum": ["", *(state.value for state in SessionState)]},
        "session state (empty: any)",
    ),
    "Limit": _param(
        "limit",
        "query",
        {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
        "page size",
    ),
    "Cursor": _param(
        "cursor",
        "query",
        {"type": "string", "pattern": "^[\\x21-\\x7e]{0,1024}$"},
        "the previous page's next",
    ),
    "VersionCursor": _param(
        "cursor",
        "query",
        {"type": "string", "pattern": "^[0-9]{0,16}$"},
        "the previous page's next (the last version it held)",
    ),
    "LogCursor": _param(
        "cursor",
        "query",
        {"type": "string", "pattern": "^(?:seq-[0-9]{1,18})?$"},
        "the previous page's next (seq-N: the entries after seq N)",
    ),
    "Reason": _param(
        "reason",
        "query",
        {"type": "string", "maxLength": REASON_MAX_CHARS},
        "why: kept in the change record",
    ),
    "IncludeRetired": _param(
        "include_retired", "query", {"type": "boolean", "default": False}, "list retired too"
    ),
    "Format": _param(
        "format", "query", {"enum": ["json", "csv"]}, "csv (or Accept: text/csv) for CSV"
    ),
    "AuditSession": _param(
        "session",
        "query",
        {"type": "string", "pattern": f"^(?:{_OPAQUE})?$"},
        "verify one session only",
    ),
    "At": {
        **_param(
            "at",
            "query",
            {"type": "string", "pattern": INSTANT_PATTERN},
            "instant: RFC 3339 or Unix seconds",
        ),
        "required": True,
        "example": "2026-01-31T12:00:00Z",
    },
    "PublicKey": {
        **_param(
            "public_key",
            "query",
            {"type": "array", "items": {"type": "string", "pattern": "^[A-Za-z0-9+/]{43}=$"}},
            "trusted checkpoint key(s): base64 of the raw 32-byte Ed25519 public key",
        ),
        "style": "form",
        "explode": True,
    },
}


def _response(description: str) -> dict[str, Any]:
    return json_content(ref("Error"), description)


# a request the HTTP layer refuses before any route runs (request line or a header over 8190
# bytes, malformed HTTP): aiohttp answers 400 in plain text
_PROTOCOL_ERROR: Final = {
    "schema": {"type": "string", "description": "aiohttp's own refusal of a malformed request"}
}

RESPONSES: dict[str, Any] = {
    "MethodNotAllowed": {
        **_response(
            "method_not_allowed: details.allowed (e.g. /v1/policies/preview is POST "
            "only: a reserved word, never a policy id)"
        ),
        "headers": {"Allow": {"schema": {"type": "string"}, "required": True}},
    },
    "BadRequest": {
        **_response("bad_request, bad_json or bad_yaml: the message names the input"),
        "content": {JSON: {"schema": ref("Error")}, "text/plain": _PROTOCOL_ERROR},
    },
    "Unauthorized": {
        **_response(
            "unauthorized: missing, malformed or unknown bearer token; details.reason, "
            "details.required_role (the route's minimum role)"
        ),
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
    "Forbidden": _response(
        "forbidden: the token's role is too low; policy_owned: a higher role owns this policy "
        "id; details.required_role"
    ),
    "NotFound": _response("not_found"),
    "Conflict": _response(
        "version_conflict: version regression or duplicate; field_locked: a higher role's "
        "policy locks a field this version sets (details.field, policy, version)"
    ),
    "PayloadTooLarge": _response("payload_too_large: details.limit_bytes"),
    "InvalidPolicy": json_content(
        {
            "allOf": [
                ref("Error"),
                {
                    "properties": {
                        "error": {
                            "properties": {
                                "details": {
                                    "properties": {
                                        "violations": {
                                            "type": "array",
                                            "items": ref("Violation"),
                                        }
                                    }
                                }
                            }
                        }
                    }
                },
            ]
        },
        "invalid_policy: details.violations names every broken rule",
    ),
    "Internal": _response("internal: generic message and details.ref; see the server log"),
    "Unavailable": _response("unavailable: not ready or a backend is down; retry"),
    "RateLimited": _response(
        "rate_limited: this token's expensive reads are over their limit (details.burst, "
        "details.rate_per_s); retry after the Retry-After header's seconds"
    ),
}
