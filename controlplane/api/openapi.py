"""The OpenAPI 3.1 document served at ``/openapi.json``, written by hand.

``x-required-role`` on each operation is the minimum role; a test compares the document with
the router and with ``controlplane.api.routes.ROUTES`` so the two cannot drift.
"""

from __future__ import annotations

import copy
from typing import Any, Final

import controlplane
from controlplane.api.openapi_base import JSON, OBJ, json_content, ref
from controlplane.api.openapi_components import SCHEMAS
from controlplane.api.openapi_parameters import PARAMETERS, RESPONSES

__all__ = ["EXTERNAL_PATHS", "openapi_document"]

# Served by the composition root (controlplane.app), documented here.
EXTERNAL_PATHS: Final = ("/healthz", "/metrics")


def _errors(*codes: int) -> dict[str, Any]:
    names = {
        400: "BadRequest",
        401: "Unauthorized",
        403: "Forbidden",
        404: "NotFound",
        405: "MethodNotAllowed",
        409: "Conflict",
        413: "PayloadTooLarge",
        422: "InvalidPolicy",
        429: "RateLimited",
        500: "Internal",
        503: "Unavailable",
    }
    return {str(c): {"$ref": f"#/components/responses/{names[c]}"} for c in (*codes, 500)}


def _op(
    op_id: str,
    summary: str,
    role: str | None,
    ok: dict[str, Any],
    *,
    ok_status: str = "200",
    errors: tuple[int, ...] = (),
    params: tuple[str, ...] = (),
    body: dict[str, Any] | None = None,
    also: dict[str, Any] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": op_id, "summary": summary}
    if role is None:
        operation["security"] = []
    else:
        operation["x-required-role"] = role
        errors = (*errors, 401, 403)
    if "PolicyId" in params:  # /v1/policies/preview is not a policy: 405
        errors = (*errors, 405)
    if params:
        operation["parameters"] = [{"$ref": f"#/components/parameters/{p}"} for p in params]
    if body is not None:
        operation["requestBody"] = body
    operation["responses"] = {ok_status: ok, **(also or {}), **_errors(*sorted(set(errors)))}
    return operation


def _policy_body(description: str) -> dict[str, Any]:
    return {
        "required": True,
        "description": description,
        "content": {
            JSON: {"schema": ref("PolicyDocument")},
            "application/yaml": {"schema": ref("PolicyDocument")},
            "text/yaml": {"schema": ref("PolicyDocument")},
        },
    }


def _object_body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": ref(schema)}}}


_V, _E, _C = "viewer", "experimenter", "compliance"
_S = ("SessionId",)
_P = ("PolicyId",)

_PATHS: dict[str, Any] = {
    "/v1/sessions": {
        "get": _op(
            "list_sessions",
            "List live sessions",
            _V,
            json_content(ref("SessionList"), "a page of sessions"),
            errors=(400, 429),
            params=("Selector", "Kind", "State", "Limit", "Cursor", "UpstreamId"),
        )
    },
    "/v1/sessions/{session_id}": {
        "get": _op(
            "get_session",
            "One session",
            _V,
            json_content(ref("Session"), "the session"),
            errors=(400, 404),
            params=_S,
        )
    },
    "/v1/sessions/{session_id}/labels": {
        "patch": _op(
            "relabel_session",
            "Set or remove labels, then re-resolve and push",
            _C,
            json_content(ref("Session"), "the relabelled session"),
            errors=(400, 404, 413),
            params=_S,
            body=_object_body("LabelsPatch"),
        )
    },
    "/v1/sessions/{session_id}/log": {
        "get": _op(
            "session_log",
            "The session's version log, in seq order, paginated (next: seq-N)",
            _V,
            json_content(ref("LogList"), "entries"),
            errors=(429, 400, 404),
            params=(*_S, "Limit", "LogCursor"),
        )
    },
    "/v1/sessions/{session_id}/config-at": {
        "get": _op(
            "config_at",
            "The configuration in effect at an instant, rebuilt from the log, with evidence",
            _C,
            json_content(ref("ConfigAt"), "the configuration and its evidence"),
            errors=(429, 400, 404, 409, 503),
            params=(*_S, "At", "PublicKey"),
        )
    },
    "/v1/policies": {
        "post": _op(
            "publish_policy",
            "Publish a policy version (experimenters: experiment policies without lock only)",
            _E,
            json_content(ref("Published"), "stored and published"),
            ok_status="201",
            errors=(400, 409, 413, 422, 503),
            body=_policy_body("the policy document, JSON or YAML"),
            also={"200": json_content(ref("Published"), "unchanged: identical to the current")},
        ),
        "get": _op(
            "list_policies",
            "List policies",
            _V,
            json_content(ref("PolicyList"), "policies"),
            errors=(400,),
            params=("IncludeRetired",),
        ),
    },
    "/v1/policies/preview": {
        "post": _op(
            "preview_policy",
            "Which live sessions a document would change (nothing is published); refused like "
            "a publish (403 policy_owned, 409 field_locked)",
            _E,
            json_content(ref("Preview"), "the preview"),
            errors=(400, 409, 413, 422),
            body=_policy_body("the policy document, JSON or YAML"),
        )
    },
    "/v1/policies/{policy_id}": {
        "get": _op(
            "get_policy",
            "One policy",
            _V,
            json_content(ref("Policy"), "the policy"),
            errors=(400, 404),
            params=_P,
        ),
        "delete": _op(
            "retire_policy",
            "Retire a policy (experimenters: experiment policies they own)",
            _E,
            json_content(ref("Published"), "retired"),
            errors=(400, 404, 409, 422, 503),
            params=(*_P, "Reason"),
        ),
    },
    "/v1/policies/{policy_id}/versions": {
        "get": _op(
            "policy_versions",
            "Every version's change record, oldest first",
            _V,
            json_content(ref("VersionList"), "change records"),
            errors=(400, 404),
            params=(*_P, "Limit", "VersionCursor"),
        )
    },
    "/v1/policies/{policy_id}/rollout": {
        "get": _op(
            "rollout_status",
            "Targeted / delivered / acknowledged / failed / pending per version and variant",
            _V,
            json_content(ref("Rollout"), "rollout status"),
            errors=(400, 404),
            params=_P,
        )
    },
    "/v1/policies/{policy_id}/rollout/stream": {
        "get": _op(
            "rollout_stream",
            "The rollout status as server-sent events: an event `rollout` (data: the Rollout "
            "JSON) at once and on every change (checked every 250 ms), a `: heartbeat` comment "
            'after 15 s of silence, an event `end` (data: {"reason": "draining" | '
            '"not_found"}) before the stream closes',
            _V,
            {
                "description": "an endless text/event-stream (docs/api.md#rollout-stream)",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            errors=(400, 404),
            params=_P,
        )
    },
    "/v1/policies/{policy_id}/rollback": {
        "post": _op(
            "rollback_policy",
            "Republish an earlier version's content as a new version (experimenters: "
            "experiment policies they own)",
            _E,
            json_content(ref("Published"), "rolled back"),
            errors=(400, 404, 409, 413, 422, 503),
            params=_P,
            body=_object_body("Rollback"),
        )
    },
    "/v1/policies/{policy_id}/transfer": {
        "post": _op(
            "transfer_policy",
            "Hand a policy id (its locks, its experiment key) to another team: its current "
            "document as the next version, the owner role kept (docs/security.md#transfers)",
            "admin",
            json_content(ref("Published"), "transferred"),
            errors=(400, 404, 409, 413, 503),
            params=_P,
            body=_object_body("Transfer"),
        )
    },
    "/v1/experiments/{key}": {
        "get": _op(
            "experiment_summary",
            "Per-variant weights, expected and exposed counts, and the sample-ratio-mismatch check",
            _V,
            json_content(ref("ExperimentSummary"), "the experiment's current iteration"),
            errors=(400, 404),
            params=("ExperimentKey",),
        )
    },
    **{
        f"/v1/policies/{{policy_id}}/{action}": {
            "post": _op(
                f"{action}_policy",
                what + " (docs/policies.md#waves; experimenters: experiment policies they own)",
                _E,
                json_content(ref("WaveAction"), "the waves after the step"),
                errors=(400, 404, 409, 503),
                params=_P,
            )
        }
        for action, what in (
            ("promote", "Advance the current version to its next wave now"),
            ("pause", "Stop the current version's automatic wave advances"),
            ("resume", "Resume them; the current wave's interval starts again"),
        )
    },
    "/v1/experiments/{key}/timeline": {
        "get": _op(
            "experiment_timeline",
            "Counted exposures over time per variant, aggregated server-side (the summary's "
            "counts in time bins; any experiment size)",
            _V,
            json_content(ref("ExperimentTimeline"), "the experiment's current iteration"),
            errors=(429, 400, 404),
            params=("ExperimentKey",),
        )
    },
    "/v1/experiments/{key}/assignments": {
        "get": _op(
            "experiment_assignments",
            "Sticky variant assignments with exposures, over the experiment's whole history "
            "(JSON, or CSV with a header row; every row unless limit is given, then a page "
            "and the next cursor in next / the X-Next-Cursor header)",
            _V,
            {
                "description": "assignments",
                "content": {
                    JSON: {"schema": ref("AssignmentList")},
                    "text/csv": {"schema": {"type": "string"}},
                },
            },
            errors=(429, 400, 404),
            params=("ExperimentKey", "Format", "Limit", "Cursor"),
        )
    },
    "/v1/audit/verify": {
        "get": _op(
            "verify_audit",
            "Recompute the hash chains (every session, or one) and the signed checkpoints",
            _C,
            json_content(ref("VerifyResult"), "one report per session, and the checkpoints"),
            errors=(429, 400, 404, 503),
            params=("AuditSession", "PublicKey"),
        )
    },
    "/readyz": {
        "get": {
            "operationId": "readyz",
            "summary": "Readiness with named checks",
            "security": [],
            "responses": {
                "200": json_content(ref("Readiness"), "ready"),
                "503": json_content(ref("Readiness"), "not ready"),
            },
        }
    },
    "/healthz": {
        "get": {
            "operationId": "healthz",
            "summary": "Liveness",
            "security": [],
            "responses": {"200": json_content(OBJ, "alive")},
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics (prefix controlplane_)",
            "security": [],
            "responses": {
                "200": {
                    "description": "text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "security": [],
            "responses": {"200": json_content(OBJ, "OpenAPI 3.1 document")},
        }
    },
}

_DOCUMENT: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {
        "title": "voice-controlplane",
        "version": controlplane.__version__,
        "description": (
            "Push versioned configuration policies into live AssemblyAI voice sessions. "
            "Bearer tokens carry a role: viewer < app < experimenter < compliance < admin; "
            "x-required-role on each operation is the minimum. A policy id is owned by the "
            "role that created it: a lower role gets 403 policy_owned."
        ),
    },
    "security": [{"bearerAuth": []}],
    "paths": _PATHS,
    "components": {
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        "schemas": SCHEMAS,
        "parameters": PARAMETERS,
        "responses": RESPONSES,
    },
}


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the document (callers may mutate it)."""
    return copy.deepcopy(_DOCUMENT)
