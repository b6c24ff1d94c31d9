"""Components of the OpenAPI document: schemas (the policy document, sessions, errors, ...),
reusable parameters and error responses. Assembled into paths by ``controlplane.api.openapi``.
"""

from __future__ import annotations

from typing import Any, Final

from controlplane.audit.sources import INSTANT_PATTERN
from policies.fields import (
    FIELDS,
    MAX_KEYTERM_CHARS,
    MAX_KEYTERMS,
    MAX_PROMPT_CHARS,
    MAX_SYSTEM_PROMPT_CHARS,
    MAX_TURN_SILENCE_MS,
    MIN_TURN_SILENCE_MS,
)
from policies.model import (
    BUCKET_BY_SESSION,
    DEFAULT_WAVE_INTERVAL_S,
    DESCRIPTION_MAX_CHARS,
    ID_MAX_CHARS,
    ID_PATTERN,
    KINDS,
    LABEL_MAX_CHARS,
    LABEL_PATTERN,
    LABEL_VALUE_MAX_CHARS,
    MAX_APPLY_DEADLINE_S,
    MAX_GUARD_MIN_SESSIONS,
    MAX_GUARD_WINDOW_S,
    MAX_ITERATION,
    MAX_LABEL_CONDITIONS,
    MAX_PRIORITY,
    MAX_SELECTOR_VALUES,
    MAX_VARIANTS,
    MAX_VERSION,
    MAX_WAVE_INTERVAL_S,
    MAX_WAVES,
    MIN_PRIORITY,
    MIN_WAVE_INTERVAL_S,
    REASON_MAX_CHARS,
    RESERVED_IDS,
    SALT_MAX_CHARS,
    VARIANT_PATTERN,
)

__all__ = ["JSON", "OBJ", "PARAMETERS", "RESPONSES", "SCHEMAS", "json_content", "ref"]

JSON: Final = "application/json"


def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _list_of(name: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["items", "next"],
        "properties": {
            "items": {"type": "array", "items": ref(name)},
            "next": {"type": ["string", "null"], "description": "cursor of the next page"},
        },
    }


# a character that is not whitespace in Python's sense (str.isspace, what the model strips),
# spelled out because regex dialects disagree on what \s covers
_NOT_BLANK: Final = r"[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"

_SILENCE = {"type": "integer", "minimum": MIN_TURN_SILENCE_MS, "maximum": MAX_TURN_SILENCE_MS}

_CONFIG = {
    "type": "object",
    "description": (
        "Canonical fields (DESIGN.md §3); limits are checked at publish time. "
        "min_turn_silence_ms must not exceed max_turn_silence_ms."
    ),
    "additionalProperties": False,
    "properties": {
        "prompt": {"type": "string", "maxLength": MAX_PROMPT_CHARS},
        "system_prompt": {"type": "string", "maxLength": MAX_SYSTEM_PROMPT_CHARS},
        "agent_context": {"type": "string", "maxLength": MAX_PROMPT_CHARS},
        "keyterms": {
            "type": "array",
            "maxItems": MAX_KEYTERMS,
            "items": {
                "type": "string",
                "maxLength": MAX_KEYTERM_CHARS,
                "pattern": _NOT_BLANK,
                "description": "not blank: at least one non-whitespace character",
            },
        },
        "min_turn_silence_ms": _SILENCE,
        "max_turn_silence_ms": _SILENCE,
        "vad_threshold": {"type": "number", "minimum": 0, "maximum": 1},
    },
}


def _one_or_many(item: dict[str, Any], max_items: int) -> dict[str, Any]:
    """A selector value: one item, or a non-empty list of them (any of)."""
    return {"oneOf": [item, {"type": "array", "minItems": 1, "maxItems": max_items, "items": item}]}


_ID = {"type": "string", "pattern": ID_PATTERN, "maxLength": ID_MAX_CHARS}
_LABEL_NAME = {"type": "string", "pattern": LABEL_PATTERN, "maxLength": LABEL_MAX_CHARS}
_LABEL_VALUES = _one_or_many(
    {"type": "string", "minLength": 1, "maxLength": LABEL_VALUE_MAX_CHARS}, MAX_SELECTOR_VALUES
)
_LABEL_MATCH = {
    "type": "object",
    "maxProperties": MAX_LABEL_CONDITIONS,
    "propertyNames": _LABEL_NAME,
    "additionalProperties": _LABEL_VALUES,
}
_SALT = {"type": ["string", "null"], "minLength": 1, "maxLength": SALT_MAX_CHARS}
_BUCKET_BY = {
    **_LABEL_NAME,
    "default": BUCKET_BY_SESSION,
    "description": f"{BUCKET_BY_SESSION} or a label name",
}
# at most three decimals; the value 12.345 is a multiple of 0.001 (JSON Schema compares
# numbers, not binary floats: a validator computing 12.345 / 0.001 in floats may disagree)
_PERCENT = {"type": "number", "minimum": 0, "maximum": 100, "multipleOf": 0.001}

_POLICY = {
    "type": "object",
    "description": (
        "A policy document (docs/policies.md). Beyond this schema: a label may not be both in "
        "match.labels and match.labels_absent; experiment variant names are unique and their "
        "weights sum to exactly 100; min_turn_silence_ms ≤ max_turn_silence_ms in set and in "
        "each variant's set merged over it."
    ),
    "required": ["id"],
    "additionalProperties": False,
    # the rules above, by the violation rule a 422 invalid_policy names for them
    "x-cross-field-rules": [
        "ascending",
        "conflict",
        "first_wave",
        "last_wave",
        "min_le_max",
        "percent_or_waves",
        "unique",
        "waves_required",
        "weights_sum",
    ],
    "properties": {
        "id": {
            **_ID,
            "not": {"enum": sorted(RESERVED_IDS)},
            "description": f"reserved (REST words): {', '.join(sorted(RESERVED_IDS))}",
        },
        "version": {
            "type": ["integer", "null"],
            "minimum": 1,
            "maximum": MAX_VERSION,
            "description": "must exceed the current; omitted or null: current + 1",
        },
        "reason": {
            "type": ["string", "null"],
            "maxLength": REASON_MAX_CHARS,
            "description": "why this version is published: kept in its change record, "
            "never part of the config",
        },
        "priority": {
            "type": "integer",
            "minimum": MIN_PRIORITY,
            "maximum": MAX_PRIORITY,
            "default": 0,
            "description": "higher wins on the same field",
        },
        "description": {"type": ["string", "null"], "maxLength": DESCRIPTION_MAX_CHARS},
        "match": {
            "type": "object",
            "additionalProperties": False,
            "description": "all conditions must hold; lists mean any-of",
            "properties": {
                "kind": _one_or_many({"enum": list(KINDS)}, len(KINDS)),
                "model": _one_or_many(
                    {"type": "string", "minLength": 1, "maxLength": LABEL_MAX_CHARS},
                    MAX_SELECTOR_VALUES,
                ),
                "labels": _LABEL_MATCH,
                "labels_absent": _one_or_many(_LABEL_NAME, MAX_SELECTOR_VALUES),
                "labels_not": _LABEL_MATCH,
            },
        },
        "set": ref("Config"),
        "defaults": ref("Config"),  # only where the client did not set the field
        "lock": {"type": "array", "items": {"enum": list(FIELDS)}},
        "rollout": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "description": "exactly one of percent and waves (docs/policies.md#waves)",
            "anyOf": [{"required": ["percent"]}, {"required": ["waves"]}],
            "not": {"type": "object", "required": ["percent", "waves"]},
            "dependentRequired": {"wave_interval_s": ["waves"]},
            "properties": {
                "percent": _PERCENT,
                "waves": {
                    "type": "array",
                    "items": _PERCENT,
                    "minItems": 1,
                    "maxItems": MAX_WAVES,
                    "description": "strictly ascending percents, the last one 100",
                },
                "wave_interval_s": {
                    "type": "number",
                    "minimum": MIN_WAVE_INTERVAL_S,
                    "maximum": MAX_WAVE_INTERVAL_S,
                    "description": f"default {DEFAULT_WAVE_INTERVAL_S:g}; only with waves",
                },
                "salt": {**_SALT, "description": 'default "rollout"'},
                "bucket_by": _BUCKET_BY,
            },
        },
        "experiment": {
            "type": ["object", "null"],
            "required": ["key", "variants"],
            "additionalProperties": False,
            "properties": {
                "key": _ID,
                "bucket_by": _BUCKET_BY,
                "salt": {**_SALT, "description": "default the experiment key"},
                "iteration": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_ITERATION,
                    "default": 1,
                    "description": "raise to reshuffle assignments (part of the bucketing salt)",
                },
                "variants": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_VARIANTS,
                    "items": {
                        "type": "object",
                        "required": ["name", "weight"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {
                                "type": "string",
                                "pattern": VARIANT_PATTERN,
                                "maxLength": ID_MAX_CHARS,
                            },
                            "weight": _PERCENT,
                            "set": ref("Config"),
                        },
                    },
                },
            },
        },
        "apply": {"enum": ["immediate", "next_turn"], "default": "immediate"},
        "apply_deadline_s": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": MAX_APPLY_DEADLINE_S,
            "default": 10,
        },
        "guard": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "description": (
                "guarded rollout (docs/policies.md#guard): halt (or roll back) this version "
                "when more than max_failure_ratio of at least min_sessions targeted sessions "
                "failed it within window_s; an omitted or null field takes the deployment's "
                "CONTROLPLANE_GUARD_* default (on by default: 0.01, 50, 300, halt)"
            ),
            "properties": {
                "enabled": {"type": ["boolean", "null"]},
                "max_failure_ratio": {
                    "type": ["number", "null"],
                    "minimum": 0,
                    "exclusiveMaximum": 1,
                },
                "min_sessions": {
                    "type": ["integer", "null"],
                    "minimum": 1,
                    "maximum": MAX_GUARD_MIN_SESSIONS,
                },
                "window_s": {
                    "type": ["number", "null"],
                    "exclusiveMinimum": 0,
                    "maximum": MAX_GUARD_WINDOW_S,
                },
                "on_breach": {"enum": ["halt", "rollback", None]},
            },
        },
    },
}

# the counters of a rollout row (controlplane.rollouts.counts.COUNTERS)
_COUNTERS = "targeted pending sent acknowledged unverified rejected unchanged guard_failures"
_COUNTS: dict[str, Any] = {name: {"type": "integer", "minimum": 0} for name in _COUNTERS.split()}
_ROLLOUT_COUNTS = {"type": "object", "properties": _COUNTS}

OBJ: dict[str, Any] = {"type": "object", "additionalProperties": True}

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
    "Config": _CONFIG,
    "PolicyDocument": _POLICY,
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
            "cause": {"enum": ["policy", "rollback", "retire", "guard"]},
            "action": {"enum": ["publish", "rollback", "retire"]},
            "actor": {"type": "string", "description": "<role>:<token digest prefix>"},
            "at": {"type": "string", "description": "RFC 3339"},
            "published_at": {"type": "string", "description": "same as at"},
            "reason": {"type": ["string", "null"]},
            "event_id": {"type": "string"},
            "role": {"type": "string", "description": "the role that published this version"},
            "owner_role": {"type": "string", "description": "the policy's owner role"},
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
            "certain": {"type": "boolean"},
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
    "Session": {
        **OBJ,
        "required": ["id", "kind", "model", "labels", "state"],
        "properties": {
            "id": {"type": "string"},
            "kind": {"enum": ["streaming-v3", "voice-agent-v1"]},
            "model": {"type": ["string", "null"]},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "state": {"type": "string"},
            "node": {"type": ["string", "null"]},
            "effective_config": {"type": "object"},
            "versions": {"type": "object"},
            "upstream_id": {
                "type": ["string", "null"],
                "description": "the upstream's session id (Begin.id, Voice Agent session_id), "
                "once the upstream answered; accepted wherever a session id is",
            },
        },
    },
    "LogEntry": {**OBJ, "description": "a version log entry (DESIGN.md §4)"},
    "Assignment": {
        **OBJ,
        "required": ["session_id", "variant"],
        "properties": {
            "session_id": {"type": "string"},
            "variant": {"type": "string"},
            "iteration": {"type": "integer", "minimum": 1},
            "first_assigned_at": {"type": ["string", "null"], "format": "date-time"},
            "exposed_at": {
                "type": ["string", "null"],
                "format": "date-time",
                "description": "when the session first ran its variant (null: not yet)",
            },
            "left_at": {
                "type": ["string", "null"],
                "format": "date-time",
                "description": "when it stopped running the experiment (a ramp-down)",
            },
            "upstream_session_id": {"type": ["string", "null"]},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "state": {"type": "string"},
        },
    },
    "ExperimentVariant": {
        "type": "object",
        "required": ["name", "weight", "expected_share", "exposed", "exposed_share"],
        "properties": {
            "name": {"type": "string"},
            "weight": {"type": "number", "description": "percent, as declared"},
            "expected_share": {"type": "number", "minimum": 0, "maximum": 1},
            "exposed": {"type": "integer", "minimum": 0},
            "exposed_share": {"type": "number", "minimum": 0, "maximum": 1},
            "expected_exposed": {"type": "number", "minimum": 0},
        },
    },
    "Srm": {
        "type": "object",
        "required": ["test", "p_value", "mismatch", "threshold", "min_exposures"],
        "properties": {
            "test": {"const": "chi-squared"},
            "p_value": {"type": "number", "minimum": 0, "maximum": 1},
            "mismatch": {"type": "boolean"},
            "threshold": {"type": "number"},
            "min_exposures": {"type": "integer", "minimum": 0},
            "statistic": {"type": ["number", "null"]},
        },
    },
    "ExperimentSummary": {
        "type": "object",
        "required": ["experiment", "iteration", "policy", "exposed", "variants", "srm"],
        "properties": {
            "experiment": {"type": "string"},
            "iteration": {"type": "integer", "minimum": 1},
            "policy": {"type": "string"},
            "version": {"type": ["integer", "null"]},
            "digest": {"type": ["string", "null"]},
            "bucket_by": {"type": "string"},
            "exposed": {"type": "integer", "minimum": 0},
            "variants": {"type": "array", "items": ref("ExperimentVariant")},
            "srm": ref("Srm"),
        },
    },
    "VerifyReport": {
        "type": "object",
        "required": ["session_id", "ok"],
        "properties": {
            "session_id": {"type": "string"},
            "ok": {"type": "boolean"},
            "count": {"type": "integer"},
            "first_bad_seq": {"type": ["integer", "null"]},
            "problem": {"type": ["string", "null"]},
            "covered_seq": {
                "type": ["integer", "null"],
                "description": "highest seq a valid signed checkpoint commits to",
            },
        },
    },
    "CheckpointSummary": {
        "type": "object",
        "required": ["ok", "count", "trust", "trusted_keys", "first_bad"],
        "properties": {
            "ok": {"type": "boolean"},
            "count": {"type": "integer"},
            "trust": {
                "enum": ["pinned", "trail"],
                "description": "pinned: the public_key values; trail: the keys it publishes",
            },
            "trusted_keys": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": {"type": "string"}},
            },
            "nodes": {"type": "object"},
            "first_bad": {"type": ["object", "null"]},
            "problems": {"type": "array", "items": {"type": "object"}},
        },
    },
    "VerifyResult": {
        "type": "object",
        "required": ["items", "next", "ok", "checkpoints"],
        "properties": {
            "items": {"type": "array", "items": ref("VerifyReport")},
            "next": {"type": "null"},
            "ok": {
                "type": "boolean",
                "description": "false when any chain is broken or any checkpoint is bad",
            },
            "checkpoints": ref("CheckpointSummary"),
            "source": {"enum": ["local", "CP_AUDIT"]},
        },
    },
    "ConfigAt": {
        "type": "object",
        "required": ["session_id", "at", "config", "policies", "established_by", "verified"],
        "properties": {
            "session_id": {"type": "string"},
            "at": {"type": "number"},
            "config": {"type": "object", "description": "canonical fields"},
            "policies": {"type": "array", "items": {"type": "object"}},
            "established_by": {
                "type": "object",
                "description": "the entry (seq, at, cause, status, hash, ...) and its meaning",
            },
            "sent_by": {"type": ["object", "null"]},
            "policies_by": {
                "type": ["object", "null"],
                "description": "the newer `unchanged` entry naming the policies, if any",
            },
            "pending": {"type": "array", "items": {"type": "object"}},
            "rebuild": {"type": "object", "description": "config_hash checks of every step"},
            "notes": {"type": "array", "items": {"type": "string"}},
            "chain": {"type": "object"},
            "checkpoint": {"type": "object"},
            "verified": {
                "type": "boolean",
                "description": "every config_hash check passed, the chain verifies and every "
                "checkpoint is valid (coverage: checkpoint.covered)",
            },
            "source": {"enum": ["local", "CP_AUDIT"]},
        },
    },
    "Readiness": {
        "type": "object",
        "required": ["ready", "checks"],
        "properties": {
            "ready": {"type": "boolean"},
            "checks": {
                "type": "object",
                "description": "each check by name (true when it passes) and facts such as "
                "nats_connected; when not ready, failing maps each failed check to why",
            },
        },
    },
    "LabelsPatch": {
        "type": "object",
        "required": ["labels"],
        "additionalProperties": False,
        "properties": {
            "labels": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 64,
                "propertyNames": {"pattern": "^[A-Za-z0-9_.-]{1,63}$"},
                "additionalProperties": {
                    "oneOf": [
                        {"type": "string", "maxLength": 256, "pattern": "^[^\\x00-\\x1f\\x7f]*$"},
                        {"type": "null"},
                    ]
                },
                "description": "a string sets the label, null removes it",
            }
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
SCHEMAS["SessionList"] = _list_of("Session")
SCHEMAS["PolicyList"] = _list_of("Policy")
SCHEMAS["VersionList"] = _list_of("PolicyVersion")
SCHEMAS["LogList"] = _list_of("LogEntry")
SCHEMAS["AssignmentList"] = _list_of("Assignment")


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
        {"type": "string", "pattern": "^(?:[a-z][a-z_-]{0,31})?$"},
        "session state",
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
        **_response("unauthorized: missing, malformed or unknown bearer token"),
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
}
