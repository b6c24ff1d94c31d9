"""The policy document in the OpenAPI document: ``PolicyDocument`` and its ``Config``, with
the limits of ``policies.fields`` and ``policies.model`` (as strict as the server:
tests/unit/api/test_openapi_policy_schema.py)."""

from __future__ import annotations

from typing import Any, Final

from controlplane.api.openapi_base import ref
from policies.fields import (
    FIELDS,
    MAX_KEYTERM_CHARS,
    MAX_KEYTERMS,
    MAX_PROMPT_CHARS,
    MAX_SYSTEM_PROMPT_CHARS,
    MAX_TURN_SILENCE_MS,
    MIN_TURN_SILENCE_MS,
)
from policies.limits import (
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

__all__ = ["CONFIG_SCHEMA", "POLICY_SCHEMA"]

# a character that is not whitespace in Python's sense (str.isspace, what the model strips),
# spelled out because regex dialects disagree on what \s covers
_NOT_BLANK: Final = r"[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"

_SILENCE = {"type": "integer", "minimum": MIN_TURN_SILENCE_MS, "maximum": MAX_TURN_SILENCE_MS}

CONFIG_SCHEMA = {
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

POLICY_SCHEMA = {
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
