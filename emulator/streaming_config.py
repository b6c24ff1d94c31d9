"""Streaming v3 configuration, as the emulator runs it: the shared model in
``sessions.dialects.streaming_v3_config`` (the gateway runs the same code to know what the
upstream runs), with ``EmulatorSettings`` as its settings."""

from __future__ import annotations

from sessions.dialects.streaming_v3_config import (
    ENCODINGS,
    KNOWN_PARAMS,
    Rejection,
    UpdateResult,
    apply_update,
    parse_connect,
)

__all__ = [
    "ENCODINGS",
    "KNOWN_PARAMS",
    "Rejection",
    "UpdateResult",
    "apply_update",
    "parse_connect",
]
