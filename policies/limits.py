"""The limits and patterns of a policy document (DESIGN §4): identifiers, labels, selectors,
versions, priorities, rollouts and waves, experiments and guards. Read by the models
(:mod:`policies.model`) and by the API's schema (``controlplane.api.openapi_policy``)."""

from __future__ import annotations

from typing import Final

__all__ = [
    "BUCKET_BY_SESSION",
    "DEFAULT_WAVE_INTERVAL_S",
    "DESCRIPTION_MAX_CHARS",
    "ID_MAX_CHARS",
    "ID_PATTERN",
    "KINDS",
    "LABEL_MAX_CHARS",
    "LABEL_PATTERN",
    "LABEL_VALUE_MAX_CHARS",
    "MAX_APPLY_DEADLINE_S",
    "MAX_GUARD_MIN_SESSIONS",
    "MAX_GUARD_WINDOW_S",
    "MAX_ITERATION",
    "MAX_LABEL_CONDITIONS",
    "MAX_PRIORITY",
    "MAX_SELECTOR_VALUES",
    "MAX_VARIANTS",
    "MAX_VERSION",
    "MAX_WAVES",
    "MAX_WAVE_INTERVAL_S",
    "MIN_PRIORITY",
    "MIN_WAVE_INTERVAL_S",
    "REASON_MAX_CHARS",
    "RESERVED_IDS",
    "SALT_MAX_CHARS",
    "VARIANT_PATTERN",
]

ID_PATTERN: Final = r"^[a-z0-9][a-z0-9-]*$"
ID_MAX_CHARS: Final = 63
VARIANT_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]*$"
LABEL_PATTERN: Final = r"^[A-Za-z0-9_][A-Za-z0-9_.:/-]*$"
LABEL_MAX_CHARS: Final = 128
LABEL_VALUE_MAX_CHARS: Final = 256
SALT_MAX_CHARS: Final = 128
DESCRIPTION_MAX_CHARS: Final = 2000
REASON_MAX_CHARS: Final = 2000
MAX_VERSION: Final = 2**53 - 1  # exact in every JSON reader (IEEE double integers)
MAX_SELECTOR_VALUES: Final = 100
MAX_VARIANTS: Final = 20
MAX_ITERATION: Final = 1_000_000
MIN_PRIORITY: Final = -1_000_000
MAX_PRIORITY: Final = 1_000_000
MAX_APPLY_DEADLINE_S: Final = 300.0
MAX_GUARD_MIN_SESSIONS: Final = 1_000_000
MAX_GUARD_WINDOW_S: Final = 86_400.0
MAX_WAVES: Final = 20  # rollout.waves entries
MIN_WAVE_INTERVAL_S: Final = 0.1
MAX_WAVE_INTERVAL_S: Final = 7 * 86_400.0
DEFAULT_WAVE_INTERVAL_S: Final = 60.0
BUCKET_BY_SESSION: Final = "session_id"
# words of the REST API under /v1/policies/ (POST /v1/policies/preview): a policy with such an
# id could not be addressed as /v1/policies/{id}
RESERVED_IDS: Final = frozenset({"preview"})
MAX_LABEL_CONDITIONS: Final = 32  # labels in match.labels, and in match.labels_not
KINDS: Final = ("streaming-v3", "voice-agent-v1")
