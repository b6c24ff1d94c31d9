"""``EmulatorSettings``: one frozen object; every disputed protocol value is a setting.

Defaults come from the dialect tables (``sessions.dialects.*_table``), never restated here.
PROTOCOLS.md item 23 lists the disputed values; each has a field below. Settings are built from
defaults < ``EMULATOR_*`` environment variables < explicit overrides (CLI flags, tests).
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal

from emulator.errors import InvalidSetting
from emulator.faults import FaultSpec
from sessions.dialects import streaming_v3_table as sv3
from sessions.dialects import voice_agent_v1_table as va1

__all__ = [
    "ENV_PREFIX",
    "FROM_STRINGS",
    "EmulatorSettings",
    "choices",
    "convert_setting",
    "parse_listen",
]

ENV_PREFIX = "EMULATOR_"

_DEFAULT_OUTPUT: Mapping[str, Any] = va1.DEFAULT_CONFIG["output"]  # type: ignore[assignment]


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:port`` for IPv6) -> (host, port); ValueError names the input."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidSetting("listen", f"{value!r} must be host:port, e.g. 127.0.0.1:8090")
    return host.strip("[]") or "127.0.0.1", int(port)


@dataclass(frozen=True)
class EmulatorSettings:
    """Every knob of the emulator (documented one by one in docs/emulator.md)."""

    # --- server -------------------------------------------------------------------------------
    listen: str = "127.0.0.1:8090"
    websocket_compression: bool = False  # permessage-deflate off by default (DESIGN.md §6)
    backlog: int = 2048
    send_timeout_s: float = 10.0  # a send blocked this long (peer not reading) drops the socket
    tls_cert: str | None = None  # PEM certificate (chain): serve https:// and wss://
    tls_key: str | None = None  # its PEM private key (both or neither)
    # --- auth (both APIs) ---------------------------------------------------------------------
    api_keys: frozenset[str] | None = None  # None: any non-empty key is accepted
    streaming_bearer: Literal["reject", "accept"] = "reject"  # "Bearer <key>" on /v3/ws
    agent_accept_raw_key: bool = False  # raw key without "Bearer" on /v1/ws
    auth_rejection: Literal["close", "http"] = "close"  # close 1008 after upgrade, or HTTP 401
    # --- streaming v3 -------------------------------------------------------------------------
    require_speech_model: bool = False
    default_speech_model: str = sv3.DEFAULT_SPEECH_MODEL
    prompt_max_chars: int = int(sv3.LIMITS["prompt_max_chars"])  # 1750 (Sep 2026) vs 1500
    agent_context_max_chars: int = int(sv3.LIMITS["agent_context_max_chars"])
    carryover_depth: int = int(sv3.LIMITS["previous_context_n_turns_default"])  # 5 vs 3
    config_rejection: Literal["close", "http"] = "close"  # bad connect params: Error+close / 400
    connect_error_close_code: int = sv3.CLOSE["invalid_message"]
    update_error_close_code: int = sv3.CLOSE["invalid_message"]  # oversize mid-stream etc.
    strict_u3_params_at_connect: bool = False  # reject every U3-only param on other models
    warning_code: int = sv3.WARNING_CODE  # no source documents the real code (PROTOCOLS Part 7.1)
    error_frame_before_close: bool = True  # send {"type":"Error"} before an error close
    enforce_chunk_duration: bool = True
    pacing_tolerance_ms: float = 1500.0  # audio may run this far ahead of wall time
    pacing_window_s: float = 10.0  # sliding window of the rate check
    max_session_seconds: float = float(sv3.LIMITS["max_session_seconds"])
    heartbeat_interval_s: float = float(sv3.LIMITS["heartbeat_interval_s"])
    max_concurrent_sessions: int | None = None  # per API; None: unlimited
    # --- turns and transcripts (both APIs) ----------------------------------------------------
    transcript_seed: int = 0
    word_ms: int = 400  # audio milliseconds of speech per transcribed word
    turn_complete_ratio: float = 0.0  # share of turns "complete" at min silence (U3, agent)
    vad_floor_dbfs: float = -60.0  # speech probability 0 at or below this level
    vad_ceiling_dbfs: float = -20.0  # speech probability 1 at or above this level
    # --- voice agent --------------------------------------------------------------------------
    resume_mode: Literal["works", "always_not_found"] = "works"
    resume_window_s: float = float(va1.LIMITS["resume_window_s"])
    default_voice: str = str(_DEFAULT_OUTPUT["voice"])
    voices: frozenset[str] = va1.VOICES
    transcription_prompt_max_chars: int = int(va1.LIMITS["transcription_prompt_max_chars"])
    immutable_policy: Literal["reject_message", "apply_rest"] = "reject_message"
    agent_error_code_case: Literal["lower", "upper"] = "lower"  # handshake codes only
    tool_arguments_as_string: bool = False  # tool.call arguments as a JSON string
    agent_word_ms: int = 300  # reply audio per agent word
    agent_session_seconds: float = float(va1.LIMITS["max_session_seconds"])
    agents: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: MappingProxyType({})
    )  # stored agents: agent_id -> session object
    # --- inspection ---------------------------------------------------------------------------
    timeline_max_entries: int = 1000
    max_closed_sessions: int = 1000
    turns_max_entries: int = 200
    # --- faults applied to every new session --------------------------------------------------
    faults: FaultSpec = field(default_factory=FaultSpec)

    def __post_init__(self) -> None:
        parse_listen(self.listen)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidSetting("tls_cert", "TLS needs both --tls-cert and --tls-key")
        if self.default_speech_model not in sv3.ALL_MODELS:
            raise InvalidSetting(
                "default_speech_model", f"{self.default_speech_model!r} is not a known model"
            )
        if self.default_voice not in self.voices:
            raise InvalidSetting("default_voice", f"{self.default_voice!r} is not in voices")
        if not 0.0 <= self.turn_complete_ratio <= 1.0:
            raise InvalidSetting("turn_complete_ratio", "must be within 0..1")
        if self.vad_ceiling_dbfs <= self.vad_floor_dbfs:
            raise InvalidSetting("vad_ceiling_dbfs", "must exceed vad_floor_dbfs")
        for name in ("word_ms", "agent_word_ms", "timeline_max_entries", "heartbeat_interval_s"):
            if getattr(self, name) <= 0:
                raise InvalidSetting(name, "must be positive")
        if self.carryover_depth < 0:
            raise InvalidSetting("carryover_depth", "must be >= 0")
        for name in FROM_STRINGS:
            allowed = choices(name)
            if allowed and getattr(self, name) not in allowed:
                raise InvalidSetting(name, f"must be one of {', '.join(allowed)}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> EmulatorSettings:
        """Defaults < ``EMULATOR_<NAME>`` variables < explicit overrides (``None`` = unset)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "" or f.name not in FROM_STRINGS:
                continue
            values[f.name] = convert_setting(f.name, raw)
        for key, value in overrides.items():
            if value is not None:
                values[key] = value
        return cls(**values)

    def public(self) -> dict[str, Any]:
        """JSON-able view (API keys are never shown, only their count)."""
        doc: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "api_keys":
                value = None if value is None else f"<{len(value)} keys>"
            elif isinstance(value, frozenset):
                value = sorted(value)
            elif isinstance(value, FaultSpec):
                value = value.to_dict()
            elif isinstance(value, Mapping):
                value = sorted(value)
            doc[f.name] = value
        return doc


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{raw!r} is not a boolean")


def _optional_int(raw: str) -> int | None:
    return None if raw.strip().lower() in ("none", "unlimited") else int(raw)


def _keys(raw: str) -> frozenset[str] | None:
    if raw.strip().lower() in ("*", "any"):
        return None
    return frozenset(k.strip() for k in raw.split(",") if k.strip())


def _words(raw: str) -> frozenset[str]:
    return frozenset(k.strip() for k in raw.split(",") if k.strip())


def _kinds() -> dict[str, tuple[Callable[[str], Any], tuple[str, ...]]]:
    """(conversion from a string, allowed words) of every setting read from a string, derived
    from its type annotation: the one declaration is the field."""
    table: dict[Any, Callable[[str], Any]] = {
        bool: _bool, int: int, float: float, str: str, int | None: _optional_int,
        str | None: str, frozenset[str]: _words, frozenset[str] | None: _keys,
    }  # fmt: skip
    kinds: dict[str, tuple[Callable[[str], Any], tuple[str, ...]]] = {}
    for name, hint in typing.get_type_hints(EmulatorSettings).items():
        if typing.get_origin(hint) is Literal:
            kinds[name] = (str, typing.get_args(hint))
        elif hint in table:
            kinds[name] = (table[hint], ())
    return kinds


_KINDS = _kinds()
FROM_STRINGS: tuple[str, ...] = tuple(_KINDS)
"""Every setting a flag, an ``EMULATOR_*`` variable or ``--set`` can give (not agents, faults)."""


def choices(name: str) -> tuple[str, ...]:
    """The words a ``Literal`` setting allows (empty for the others)."""
    return _KINDS[name][1] if name in _KINDS else ()


def convert_setting(name: str, raw: str) -> Any:
    if name not in _KINDS:
        raise InvalidSetting(name, "is not a setting read from a string")
    convert = _KINDS[name][0]
    try:
        return convert(raw)
    except ValueError as exc:
        raise InvalidSetting(name, f"{ENV_PREFIX}{name.upper()}={raw!r}: {exc}") from exc
