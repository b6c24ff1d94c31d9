"""The component schemas of the OpenAPI document: errors, policies and their versions,
publish and preview answers, rollouts, with the policy document (``openapi_policy``) and the
session, experiment and audit schemas (``openapi_sessions``); parameters and responses are in
``openapi_parameters``. Assembled into paths by ``controlplane.api.openapi``.
"""

from __future__ import annotations

from typing import Any

from controlplane.api.openapi_base import OBJ, list_of, ref
from controlplane.api.openapi_policy import CONFIG_SCHEMA, POLICY_SCHEMA
from controlplane.api.openapi_sessions import SESSION_SCHEMAS
from policies.limits import MAX_VERSION, REASON_MAX_CHARS

__all__ = ["SCHEMAS"]

# the counters of a rollout row (controlplane.rollouts.counts.COUNTERS)
_COUNTERS = (
    "targeted pending sent acknowledged unverified rejected unchanged guard_failures in_doubt"
)
_COUNTS: dict[str, Any] = {name: {"type": "integer", "minimum": 0} for name in _COUNTERS.split()}
_ROLLOUT_COUNTS = {"type": "object", "properties": _COUNTS}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "details"],
                "properties": {
                    "code": {"type": "string", "description": "stable machine-readable code"},
                    "message": {"type": "string"},
                    "details": {"type": "object"},
                },
            }
        },
    },
    "Violation": {
        "type": "object",
        "required": ["field", "rule", "message"],
        "properties": {
            "field": {"type": "string"},
            "rule": {"type": "string"},
            "message": {"type": "string"},
            "limit": {},
        },
    },
    "Config": CONFIG_SCHEMA,
    "PolicyDocument": POLICY_SCHEMA,
    "Policy": {**OBJ, "description": "the stored policy document plus its state"},
    "PolicyVersion": {
        **OBJ,
        "description": "a version's change record (docs/policies.md#history)",
        "required": [
            "id",
            "version",
            "action",
            "actor",
            "at",
            "reason",
            "digest",
            "policy",
            "before",
            "after",
        ],
        "properties": {
            "id": {"type": "string"},
            "version": {"type": "integer"},
            "status": {"enum": ["active", "retired"]},
            "cause": {"enum": ["policy", "rollback", "retire", "guard", "transfer"]},
            "action": {"enum": ["publish", "rollback", "retire", "transfer"]},
            "actor": {"type": "string", "description": "<role>:<token digest prefix>"},
            "at": {"type": "string", "description": "RFC 3339"},
            "published_at": {"type": "string", "description": "same as at"},
            "reason": {"type": ["string", "null"]},
            "event_id": {"type": "string"},
            "role": {"type": "string", "description": "the role that published this version"},
            "owner_role": {"type": "string", "description": "the policy's owner role"},
            "team": {
                "type": ["string", "null"],
                "description": "the team this version was published for (null: none named)",
            },
            "owner_team": {
                "type": ["string", "null"],
                "description": "the policy's owner team (docs/security.md#teams)",
            },
            "digest": {"type": "string", "description": "sha256 of the canonical document"},
            "policy": {"type": "object", "description": "this version's document"},
            "before": {"type": ["object", "null"], "description": "document in effect before"},
            "after": {"type": ["object", "null"], "description": "document in effect after"},
        },
    },
    "Published": {
        **OBJ,
        "required": ["id", "version", "unchanged", "digest"],
        "properties": {
            "id": {"type": "string"},
            "version": {"type": "integer", "description": "the new (or, unchanged, current)"},
            "event_id": {"type": "string"},
            "type": {"enum": ["policy.published", "policy.retired"]},
            "unchanged": {
                "type": "boolean",
                "description": "true (200): identical to the current version, none created",
            },
            "digest": {"type": "string"},
            "rolled_back_to": {"type": "integer"},
            "owner_role": {
                "type": "string",
                "description": "only when this version changed the owner (a higher role's "
                "takeover, a transfer): the owner role now",
            },
            "owner_team": {"type": "string", "description": "... the owner team now"},
            "previous_owner_role": {"type": "string", "description": "... the owner role before"},
            "previous_owner_team": {"type": "string", "description": "... the owner team before"},
            "warnings": {
                "type": "array",
                "items": ref("LockWarning"),
                "description": "locks of a higher role this version crosses only on sessions "
                "carrying both policies' labels; the lock wins there",
            },
        },
    },
    "LockWarning": {
        **OBJ,
        "required": ["code", "field", "policy", "version", "owner_role", "message"],
        "properties": {
            "code": {"const": "locked_field"},
            "field": {"type": "string"},
            "policy": {"type": "string"},
            "version": {"type": "integer"},
            "owner_role": {"type": "string"},
            "owner_team": {"type": ["string", "null"]},
            "certain": {"type": "boolean"},
            "locks": {"type": "boolean"},
            "message": {"type": "string"},
        },
    },
    "Preview": {
        **OBJ,
        "properties": {
            "id": {"type": "string"},
            "version": {"type": "integer"},
            "targeted": {"type": "integer"},
            "changed": {"type": "integer"},
            "by_kind": {"type": "object"},
            "by_variant": {"type": "object"},
            "samples": {"type": "array", "items": {"type": "object"}},
            "warnings": {"type": "array", "items": ref("LockWarning")},
        },
    },
    "WaveAction": {
        **OBJ,
        "required": ["id", "version", "waves"],
        "properties": {
            "id": {"type": "string"},
            "version": {"type": "integer"},
            "waves": {"type": ["object", "null"]},
        },
    },
    "Rollout": {
        **OBJ,
        "required": ["id", "version", "status", "state", "versions", "totals", "halt", "guard"],
        "properties": {
            "id": {"type": "string"},
            "version": {"type": "integer", "description": "the policy's current version"},
            "status": {"enum": ["active", "retired"]},
            "state": {
                "enum": ["active", "halted", "rolled_back", "retired"],
                "description": "halted: the rollout guard stopped the current version; "
                "rolled_back: the current version is a rollback published after a halt",
            },
            "versions": {
                "type": "array",
                "items": {
                    **_ROLLOUT_COUNTS,
                    "properties": {
                        "version": {"type": "integer"},
                        "variant": {"type": ["string", "null"]},
                        **_COUNTS,
                    },
                },
            },
            "totals": _ROLLOUT_COUNTS,
            "halt": {
                "type": ["object", "null"],
                "description": "why the guard halted the current (or, rolled back or "
                "retired, the previous) version",
                "properties": {
                    "version": {"type": "integer"},
                    "at": {"type": "string"},
                    "actor": {"type": "string"},
                    "reason": {"type": "string"},
                    "failed": {"type": "integer"},
                    "targeted": {"type": "integer"},
                    "ratio": {"type": "number"},
                    "max_failure_ratio": {"type": "number"},
                    "min_sessions": {"type": "integer"},
                    "window_s": {"type": "number"},
                    "on_breach": {"enum": ["halt", "rollback"]},
                    "decided_by": {"type": "string"},
                    "rollback_to": {"type": ["integer", "null"]},
                },
            },
            "waves": {
                "type": ["object", "null"],
                "description": "the current version's progressive waves (null: none); "
                "state advancing | paused | stalled (halted at this wave) | complete",
                "properties": {
                    "version": {"type": "integer"},
                    "waves": {"type": "array", "items": {"type": "number"}},
                    "wave_interval_s": {"type": "number"},
                    "index": {"type": "integer", "description": "current wave, from 0"},
                    "percent": {"type": "number"},
                    "state": {"enum": ["advancing", "paused", "stalled", "complete"]},
                    "paused": {"type": "boolean"},
                    "started_at": {"type": "string"},
                    "next_at": {"type": ["string", "null"]},
                    "previous_version": {"type": ["integer", "null"]},
                    "steps": {"type": "array", "items": {"type": "object"}},
                },
            },
            "guard": {
                "type": "object",
                "description": "the current version's guard, defaults resolved",
                "properties": {
                    "enabled": {"type": "boolean"},
                    "max_failure_ratio": {"type": "number"},
                    "min_sessions": {"type": "integer"},
                    "window_s": {"type": "number"},
                    "on_breach": {"enum": ["halt", "rollback"]},
                },
            },
        },
    },
    **SESSION_SCHEMAS,
    "Transfer": {
        "type": "object",
        "additionalProperties": False,
        "required": ["team", "reason"],
        "properties": {
            "team": {
                "type": "string",
                "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$",
                "description": "the new owner team (ASCII, read in lower case)",
            },
            "reason": {"type": "string", "pattern": "\\S", "maxLength": REASON_MAX_CHARS},
        },
    },
    "Rollback": {
        "type": "object",
        "additionalProperties": False,
        "oneOf": [{"required": ["to"]}, {"required": ["version"]}],  # one of them, not both
        "properties": {
            "to": {"type": "integer", "minimum": 1, "maximum": MAX_VERSION},
            "version": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_VERSION,
                "description": "alias of to",
            },
            "reason": {"type": ["string", "null"], "maxLength": REASON_MAX_CHARS},
        },
    },
}
SCHEMAS["SessionList"] = list_of("Session")
SCHEMAS["PolicyList"] = list_of("Policy")
SCHEMAS["VersionList"] = list_of("PolicyVersion")
SCHEMAS["LogList"] = list_of("LogEntry")
SCHEMAS["AssignmentList"] = list_of("Assignment")
