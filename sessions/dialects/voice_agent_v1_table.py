"""AssemblyAI Voice Agent API: limits, mutability and error codes (PROTOCOLS.md Part 2).

The one table for this dialect: the codec (``voice_agent_v1``) and the emulator both read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = [
    "CANONICAL_TO_WIRE",
    "CLOSE",
    "DEFAULT_CONFIG",
    "DIALECT",
    "ERROR_CODES",
    "IMMUTABLE_PATHS",
    "LIMITS",
    "MODEL",
    "NON_FATAL_ERROR_CODES",
    "REMOVED_VOICES",
    "VOICES",
]

DIALECT: Final = "voice-agent-v1"
MODEL: Final = "voice-agent"  # the API has no model choice; sessions carry this model name

# canonical field -> path inside session.update's "session" object
CANONICAL_TO_WIRE: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "prompt": ("input", "transcription_prompt"),
        "system_prompt": ("system_prompt",),
        "keyterms": ("input", "keyterms"),
        "min_turn_silence_ms": ("input", "turn_detection", "min_silence"),
        "max_turn_silence_ms": ("input", "turn_detection", "max_silence"),
        "vad_threshold": ("input", "turn_detection", "vad_threshold"),
        # "agent_context" has no Voice Agent equivalent: always skipped.
    }
)

# Fields that may not change after session.ready -> session.error immutable_field
IMMUTABLE_PATHS: Final = frozenset(
    {("greeting",), ("output", "voice"), ("output", "format"), ("agent_id",), ("output", "type")}
)

VOICES: Final = frozenset(
    {"ivy", "anna", "james", "ryan", "olivia", "lucas", "emma", "noah", "ava", "leo"}
)
REMOVED_VOICES: Final = frozenset({"claire", "dawn", "sam", "mia", "sophie"})

LIMITS: Final[Mapping[str, int | float]] = MappingProxyType(
    {
        "keyterms_max_items": 100,
        "transcription_prompt_max_chars": 1750,
        "volume_min": 0,
        "volume_max": 100,
        "resume_window_s": 30,
        "max_session_seconds": 10_800,
        "tool_timeout_min_s": 1,
        "tool_timeout_max_s": 300,
        "tool_timeout_default_s": 120,
        "input_sample_rate_pcm": 24_000,
        "input_sample_rate_g711": 8000,
        "agent_ready_timeout_s": 10,
    }
)

DEFAULT_CONFIG: Final[Mapping[str, object]] = MappingProxyType(
    {
        "system_prompt": "",
        "greeting": None,
        "input": {
            "type": "audio",
            "format": {"encoding": "audio/pcm", "sample_rate": 24_000},
            "keyterms": [],
            "turn_detection": {
                "vad_threshold": 0.5,
                "min_silence": 1000,
                "max_silence": 3000,
                "interrupt_response": True,
            },
        },
        "output": {
            "type": "audio",
            "voice": "ivy",
            "format": {"encoding": "audio/pcm", "sample_rate": 24_000},
            "volume": 100,
        },
        "tools": [],
        "llm": [],
        "pre_connect_requests": [],
    }
)

ERROR_CODES: Final = frozenset(
    {
        "unauthorized",
        "forbidden",
        "internal_error",
        "server_error",
        "at_capacity",
        "concurrency_exceeded",
        "session_not_found",
        "session_forbidden",
        "session_expired",
        "agent_init_failed",
        "agent_timeout",
        "agent_not_found",
        "agent_id_not_first",
        "invalid_format",
        "invalid_audio",
        "invalid_value",
        "invalid_config",
        "immutable_field",
        "audio_rate_violation",
        "invalid_webhook",
    }
)
# session.error codes after which the session stays open
NON_FATAL_ERROR_CODES: Final = frozenset(
    {
        "invalid_format",
        "invalid_audio",
        "invalid_value",
        "invalid_config",
        "immutable_field",
        "audio_rate_violation",
        "server_error",
    }
)

CLOSE: Final[Mapping[str, int]] = MappingProxyType(
    {"normal": 1000, "policy": 1008, "internal": 1011}
)
