"""The load test's settings, read once from ``LT_*`` environment variables: the scenario
preset (weights, publish rate, session lifetime) with its overrides, the run label, the
policy, the audio and the SLOs (docs/loadtest.md)."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable
from typing import Any

from payloads import STREAMING_MODEL

# the policy schema's limits (docs/policies.md): a bigger version is refused at every publish
PROMPT_MAX_CHARS = 1750
KEYTERMS_MAX = 100

__all__ = [
    "API_KEY",
    "AUDIO",
    "CONNECT_TIMEOUT_S",
    "CONVERGENCE_TIMEOUT_S",
    "EMULATOR_URL",
    "KEEP_POLICY",
    "KEYTERMS",
    "MODEL",
    "POLICY_ID",
    "PRESET",
    "PROMPT_CHARS",
    "PUBLISH_RATE",
    "RUN",
    "SCENARIO",
    "SCENARIOS",
    "SESSION_S",
    "SLO",
    "TOKEN",
    "WEIGHTS",
]

# -- settings ----------------------------------------------------------------------------------
SCENARIOS: dict[str, dict[str, Any]] = {
    "steady": {"weights": "streaming=3,agent=1,control=4", "rate": 0.2, "session_s": "0"},
    "broadcast": {"weights": "streaming=1,agent=1,control=6", "rate": 1.0, "session_s": "0"},
    "storm": {"weights": "streaming=2,agent=1,control=3", "rate": 0.0, "session_s": "3"},
    "churn": {"weights": "streaming=2,agent=1,control=3", "rate": 1.0, "session_s": "2-8"},
}


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _number(name: str, default: str, low: float, high: float, *, whole: bool = False) -> Any:
    """``name`` as a number from ``low`` to ``high``; a bad value stops the run naming the
    variable, what it got and the range (it was a ValueError traceback at import)."""
    raw = _env(name, default)
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:  # NaN fails both comparisons
        kind = "a whole number" if whole else "a number"
        raise SystemExit(f"{name}={raw!r}: must be {kind} from {low:g} to {high:g}")
    return value


SCENARIO = _env("LT_SCENARIO", "steady")
if SCENARIO not in SCENARIOS:
    raise SystemExit(f"LT_SCENARIO={SCENARIO!r}: choose one of {', '.join(SCENARIOS)}")
PRESET = SCENARIOS[SCENARIO]
TOKEN = _env("LT_TOKEN", "")
API_KEY = _env("LT_API_KEY", "loadtest-key")
EMULATOR_URL = _env("LT_EMULATOR_URL", "").rstrip("/")
RUN = _env("LT_RUN", "lt" + uuid.uuid4().hex[:10])
POLICY_ID = _env("LT_POLICY_ID", "loadtest")
PUBLISH_RATE: float = _number("LT_PUBLISH_RATE", str(PRESET["rate"]), 0, 1000)
PROMPT_CHARS: int = _number("LT_PROMPT_CHARS", "165", 0, PROMPT_MAX_CHARS, whole=True)
KEYTERMS: int = _number("LT_KEYTERMS", "0", 0, KEYTERMS_MAX, whole=True)
AUDIO = _env("LT_AUDIO", "turns")
if AUDIO not in ("turns", "silence"):  # anything else ran as "turns" without a word
    raise SystemExit(f"LT_AUDIO={AUDIO!r}: choose turns or silence")
MODEL = _env("LT_STREAMING_MODEL", STREAMING_MODEL)
CONVERGENCE_TIMEOUT_S: float = _number("LT_CONVERGENCE_TIMEOUT_S", "10", 0.1, 3600)
KEEP_POLICY = _env("LT_KEEP_POLICY", "0").lower() in ("1", "true", "yes")
CONNECT_TIMEOUT_S = 15.0
SLO = {
    "propagation_p99_ms": _number("LT_SLO_PROPAGATION_P99_MS", "2000", 0, 3_600_000),
    "convergence_p99_ms": _number("LT_SLO_CONVERGENCE_P99_MS", "5000", 0, 3_600_000),
    "connect_p99_ms": _number("LT_SLO_CONNECT_P99_MS", "2000", 0, 3_600_000),
    "fail_ratio": _number("LT_SLO_FAIL_RATIO", "0.01", 0, 1),
    "min_propagations": _number("LT_SLO_MIN_PROPAGATIONS", "0", 0, 1e9),
}


def _weights(raw: str) -> dict[str, int]:
    out = {"streaming": 0, "agent": 0, "control": 0}
    for item in raw.split(","):
        key, _, value = item.partition("=")
        if key.strip() not in out or not value.strip().isdigit():
            raise SystemExit(f"LT_WEIGHTS item {item!r} must be streaming|agent|control=<int>")
        out[key.strip()] = int(value)
    return out


WEIGHTS = _weights(_env("LT_WEIGHTS", PRESET["weights"]))


def _lifetime() -> Callable[[], float]:
    raw = _env("LT_SESSION_S", PRESET["session_s"])
    low, _, high = raw.partition("-")
    try:
        a, b = float(low), float(high or low)
    except ValueError:
        a = b = -1.0
    if not 0 <= a <= b <= 86_400:
        raise SystemExit(f"LT_SESSION_S={raw!r}: must be seconds (0: held) or a range LOW-HIGH, "
                         "0 <= LOW <= HIGH <= 86400")  # fmt: skip
    return lambda: random.uniform(a, b) if b > a else a


SESSION_S = _lifetime()
