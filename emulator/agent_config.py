"""Voice Agent ``session`` object, as the emulator runs it: the shared model in
``sessions.dialects.voice_agent_v1_config`` (the gateway predicts the upstream's answers with
the same code), with ``EmulatorSettings`` as its settings."""

from __future__ import annotations

from sessions.dialects.voice_agent_v1_config import (
    ConfigProblem,
    default_config,
    immutable_changes,
    merge,
    resolve_formats,
    touched_paths,
    validate,
    without_paths,
)

__all__ = [
    "ConfigProblem",
    "default_config",
    "immutable_changes",
    "merge",
    "resolve_formats",
    "touched_paths",
    "validate",
    "without_paths",
]
