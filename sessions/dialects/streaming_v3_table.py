"""AssemblyAI Universal Streaming v3: limits and model capability matrix (PROTOCOLS.md Part 1).

The one table for this dialect: the codec (``streaming_v3``) and the emulator both read it.
Disputed values (PROTOCOLS.md §1 / Part 7) are defaults here and settings in the emulator.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = [
    "ALL_MODELS",
    "API_VERSION",
    "CANONICAL_TO_WIRE",
    "CLOSE",
    "CONNECT_ONLY_PARAMS",
    "DEFAULT_MODE",
    "DEFAULT_SPEECH_MODEL",
    "DIALECT",
    "LIMITS",
    "MODE_PRESETS",
    "PARAM_ALIASES",
    "U3_ONLY_PARAMS",
    "U3_PRO_MODELS",
    "UNIVERSAL_STREAMING_MODELS",
    "UPDATABLE_PARAMS",
    "US_DEFAULTS",
    "WARNING_CODE",
    "is_u3_pro",
]

DIALECT: Final = "streaming-v3"
API_VERSION: Final = "2025-05-12"

U3_PRO_MODELS: Final = frozenset(
    {"u3-rt-pro", "u3-rt-pro-beta-1", "u3-pro", "universal-3-5-pro", "universal-3-6-pro"}
)
UNIVERSAL_STREAMING_MODELS: Final = frozenset(
    {"universal-streaming-english", "universal-streaming-multilingual"}
)
ALL_MODELS: Final = U3_PRO_MODELS | UNIVERSAL_STREAMING_MODELS | {"whisper-rt", "universal-3-6"}
DEFAULT_SPEECH_MODEL: Final = "universal-3-6-pro"  # SKILL-S, Sep 2026; a setting in the emulator


def is_u3_pro(model: str) -> bool:
    return model in U3_PRO_MODELS


# Parameters that only U3-Pro models take: rejected at connect, stripped with a Warning mid-stream.
U3_ONLY_PARAMS: Final = frozenset(
    {
        "prompt",
        "agent_context",
        "previous_context_n_turns",
        "continuous_partials",
        "interruption_delay",
        "voice_focus",
        "voice_focus_threshold",
        "mode",
        "language_codes",
    }
)

# Fields an UpdateConfiguration may carry (PROTOCOLS.md §1.6.2).
UPDATABLE_PARAMS: Final = frozenset(
    {
        "mode",
        "min_turn_silence",
        "max_turn_silence",
        "interruption_delay",
        "vad_threshold",
        "prompt",
        "keyterms_prompt",
        "agent_context",
        "continuous_partials",
        "language_codes",
        "session_heartbeat",
        "end_of_turn_confidence_threshold",
        "format_turns",
        "filter_profanity",
        "min_end_of_turn_silence_when_confident",
        "turn_left_pad_ms",
    }
)

CONNECT_ONLY_PARAMS: Final = frozenset(
    {
        "speech_model",
        "sample_rate",
        "encoding",
        "previous_context_n_turns",
        "voice_focus",
        "voice_focus_threshold",
        "speaker_labels",
        "max_speakers",
        "redact_pii",
        "redact_pii_policies",
        "redact_pii_sub",
        "domain",
        "language_detection",
        "token",
        "inactivity_timeout",
        "llm_gateway",
        "webhook_url",
        "webhook_auth_header_name",
        "webhook_auth_header_value",
    }
)

# canonical field -> (wire param, models that take it or None for all models)
CANONICAL_TO_WIRE: Final[Mapping[str, tuple[str, frozenset[str] | None]]] = MappingProxyType(
    {
        "prompt": ("prompt", U3_PRO_MODELS),
        "agent_context": ("agent_context", U3_PRO_MODELS),
        "keyterms": ("keyterms_prompt", None),
        "min_turn_silence_ms": ("min_turn_silence", None),
        "max_turn_silence_ms": ("max_turn_silence", None),
        "vad_threshold": ("vad_threshold", None),
        # "system_prompt" has no streaming equivalent: always skipped.
    }
)

# deprecated param -> current param (the SDKs rewrite it; PROTOCOLS.md §1.4)
PARAM_ALIASES: Final[Mapping[str, str]] = MappingProxyType(
    {"min_end_of_turn_silence_when_confident": "min_turn_silence"}
)

LIMITS: Final[Mapping[str, int | float]] = MappingProxyType(
    {
        "prompt_max_chars": 1750,  # 1500 in older docs: a setting in the emulator
        "agent_context_max_chars": 1750,
        "keyterms_max_items": 100,  # more is an error
        "keyterm_max_chars": 50,  # longer terms are silently dropped
        "language_codes_max_items": 10,
        "chunk_min_ms": 50,
        "chunk_max_ms": 1000,
        "max_message_bytes": 128 * 1024,
        "max_session_seconds": 10_800,
        "token_expires_min_s": 1,
        "token_expires_max_s": 600,
        "token_session_min_s": 60,
        "token_session_max_s": 10_800,
        "previous_context_n_turns_max": 100,
        "previous_context_n_turns_default": 5,
        "interruption_delay_max_ms": 1000,
        "min_turn_silence_min_ms": 50,
        "min_turn_silence_max_ms": 10_000,
        "inactivity_timeout_min_s": 5,
        "inactivity_timeout_max_s": 3600,
        "heartbeat_interval_s": 5,
        "sample_rate_min": 8000,
        "sample_rate_max": 96_000,
    }
)

# WebSocket close codes (PROTOCOLS.md §1.8)
CLOSE: Final[Mapping[str, int]] = MappingProxyType(
    {
        "normal": 1000,
        "unauthorized": 1008,
        "too_big": 1009,
        "internal": 1011,
        "cancelled": 3005,
        "invalid_message": 3006,
        "audio_violation": 3007,
        "expired": 3008,
        "too_many_sessions": 3009,
    }
)

# The `Warning` code for a field stripped from an update: no source documents the real code
# (PROTOCOLS.md Part 7.1); the emulator's default, and what the gateway sends for a locked field.
WARNING_CODE: Final = 3010

# The preset a U3-Pro session runs when the client names no `mode` (Begin echoes it; SKILL-S).
DEFAULT_MODE: Final = "balanced"

# U3-Pro mode presets (SKILL-S): min_turn_silence, max_turn_silence, interruption_delay
MODE_PRESETS: Final[Mapping[str, Mapping[str, int | float]]] = MappingProxyType(
    {
        "min_latency": {
            "min_turn_silence": 128,
            "max_turn_silence": 640,
            "interruption_delay": 0,
            "vad_threshold": 0.2,
        },
        "balanced": {
            "min_turn_silence": 128,
            "max_turn_silence": 1280,
            "interruption_delay": 500,
            "vad_threshold": 0.2,
        },
        "max_accuracy": {
            "min_turn_silence": 512,
            "max_turn_silence": 2560,
            "interruption_delay": 500,
            "vad_threshold": 0.2,
        },
    }
)

# Universal-Streaming defaults (SPEC): used when the model is not U3-Pro.
US_DEFAULTS: Final[Mapping[str, int | float]] = MappingProxyType(
    {"min_turn_silence": 400, "max_turn_silence": 1280, "vad_threshold": 0.4}
)
