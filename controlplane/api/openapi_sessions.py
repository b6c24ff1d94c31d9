"""Schemas of the OpenAPI document for sessions, their version logs and labels, experiments,
the audit answers and readiness."""

from __future__ import annotations

from typing import Any

from controlplane.api.openapi_base import OBJ, ref

__all__ = ["SESSION_SCHEMAS"]

SESSION_SCHEMAS: dict[str, Any] = {
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
            "client_config": {
                "type": "object",
                "description": "the fields the client set itself (its connect and updates)",
            },
            "effective_config": {
                "type": "object",
                "description": "what the policies want the session to run (canonical fields)",
            },
            "running_config": {
                "type": ["object", "null"],
                "description": "what the upstream runs as the record knows it (canonical "
                "fields; absent: the upstream's default): pushes acknowledged, client updates "
                "answered; Streaming v3 and control-channel apps: as sent or reported (no "
                "acknowledgement exists). It differs from effective_config while a push is "
                "pending or in doubt, a value is quarantined, or the client overrides an "
                "unlocked policy field (not fought at once); null: nothing (the upstream "
                "refused the connect: no upstream session runs), or a record from before it",
            },
            "in_doubt": {
                "type": "array",
                "items": {"type": "string"},
                "description": "canonical fields running_config may have wrong: Streaming v3 "
                "through the gateway, an upstream Warning (or Error) that no update explains "
                "came after the last update that set them (the protocol cannot say which "
                "update the upstream did not apply); a later update setting a field ends its "
                "doubt. While any is in doubt the state is unverified, never synced. Empty "
                'otherwise (docs/audit.md, "Streaming v3 warnings")',
            },
            "versions": {"type": "object"},
            "upstream_id": {
                "type": ["string", "null"],
                "description": "the upstream's session id (Begin.id, Voice Agent session_id), "
                "once the upstream answered; accepted wherever a session id is",
            },
            "registered_by": {
                "type": ["string", "null"],
                "description": "the app that registered the session on the control channel: "
                "its token's team, else (a token without a team) token:<sha256 prefix> to "
                "compliance and admin and 'token' to other roles (null: a gateway session); "
                "only that app may register its id again",
            },
            "bucket_id": {
                "type": ["string", "null"],
                "description": "the session whose call this one continues (a Voice Agent "
                "session.resume through the gateway): bucket_by session_id hashes its id",
            },
        },
    },
    "LogEntry": {**OBJ, "description": "a version log entry (DESIGN.md §4)"},
    "Assignment": {
        **OBJ,
        "required": ["session_id", "variant"],
        "properties": {
            "session_id": {"type": "string"},
            "variant": {
                "type": "string",
                "description": "the arm the session is counted in: the one it was first "
                "exposed to (the entry exposed_seq names), else its current assignment",
            },
            "assigned_variant": {
                "type": ["string", "null"],
                "description": "the arm its current assignment gives (a weight change may "
                "have moved it since its exposure); null: not live on this replica",
            },
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
            "call_id": {
                "type": ["string", "null"],
                "description": "the call's first session id (a resumed session: the one "
                "it resumes); exposures are counted once per call",
            },
            "counted": {
                "type": "boolean",
                "description": "the summary counts this row (its call's first exposure)",
            },
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
            "removed": {
                "type": "boolean",
                "description": "true: a variant this version no longer declares, exposed "
                "earlier in the iteration (weight 0: the split is broken)",
            },
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
    "ExperimentTimeline": {
        "type": "object",
        "required": ["experiment", "iteration", "bin_s", "exposed", "binned", "variants", "bins"],
        "properties": {
            "experiment": {"type": "string"},
            "iteration": {"type": "integer", "minimum": 1},
            "policy": {"type": "string"},
            "version": {"type": ["integer", "null"]},
            "bin_s": {"type": "integer", "minimum": 60, "description": "bin width, seconds"},
            "exposed": {
                "type": "integer",
                "minimum": 0,
                "description": "counted exposures (calls), as the summary's",
            },
            "binned": {
                "type": "integer",
                "minimum": 0,
                "description": "the ones the bins "
                "hold (fewer only for exposures counted before bins were kept)",
            },
            "variants": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "exposed", "binned"],
                    "properties": {
                        "name": {"type": "string"},
                        "exposed": {"type": "integer", "minimum": 0},
                        "binned": {"type": "integer", "minimum": 0},
                        "first": {"type": ["string", "null"], "format": "date-time"},
                        "latest": {"type": ["string", "null"], "format": "date-time"},
                    },
                },
            },
            "bins": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["at", "variant", "exposed", "cumulative"],
                    "properties": {
                        "at": {
                            "type": "string",
                            "format": "date-time",
                            "description": "the bin's start",
                        },
                        "variant": {"type": "string"},
                        "exposed": {"type": "integer", "minimum": 1},
                        "cumulative": {"type": "integer", "minimum": 1},
                    },
                },
            },
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
            "in_doubt": {
                "type": "boolean",
                "description": "an entry at or before the instant leaves what the upstream "
                "runs unknown (doubts): config is the record's, not proof it ran",
            },
            "doubts": {
                "type": "array",
                "items": {"type": "object"},
                "description": "those entries: seq, at, cause, status, version, error",
            },
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
}
