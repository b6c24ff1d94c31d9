"""Streaming v3 configuration: connect-query parsing and ``UpdateConfiguration`` merging.

Pure functions over plain dicts keyed by the protocol's own parameter names. The effective
config always carries the resolved turn parameters (mode preset or Universal-Streaming
defaults, then explicit values), so inspection shows what the session actually runs.

One model, two users: the emulator runs it as the upstream (``emulator.streaming_config``
re-exports it with its settings), the gateway runs it to know exactly what the upstream runs
after every message (``TABLE_SETTINGS``: the table's values), presets and clamps included.
``canonical_view`` projects a wire config onto the canonical fields.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from sessions.dialects import streaming_v3_table as table

__all__ = [
    "ENCODINGS",
    "KNOWN_PARAMS",
    "TABLE_SETTINGS",
    "Rejection",
    "StreamingSettings",
    "TableSettings",
    "UpdateResult",
    "apply_update",
    "parse_connect",
]

Config = dict[str, Any]


class StreamingSettings(Protocol):
    """The disputed values the model needs (the emulator's settings satisfy it)."""

    @property
    def require_speech_model(self) -> bool: ...
    @property
    def default_speech_model(self) -> str: ...
    @property
    def prompt_max_chars(self) -> int: ...
    @property
    def agent_context_max_chars(self) -> int: ...
    @property
    def carryover_depth(self) -> int: ...
    @property
    def connect_error_close_code(self) -> int: ...
    @property
    def update_error_close_code(self) -> int: ...
    @property
    def strict_u3_params_at_connect(self) -> bool: ...


@dataclass(frozen=True)
class TableSettings:
    """``StreamingSettings`` at the table's values (what the control plane assumes)."""

    require_speech_model: bool = False
    default_speech_model: str = table.DEFAULT_SPEECH_MODEL
    prompt_max_chars: int = int(table.LIMITS["prompt_max_chars"])
    agent_context_max_chars: int = int(table.LIMITS["agent_context_max_chars"])
    carryover_depth: int = int(table.LIMITS["previous_context_n_turns_default"])
    connect_error_close_code: int = table.CLOSE["invalid_message"]
    update_error_close_code: int = table.CLOSE["invalid_message"]
    strict_u3_params_at_connect: bool = False


TABLE_SETTINGS = TableSettings()

ENCODINGS = frozenset({"pcm_s16le", "pcm_mulaw", "opus", "ogg_opus", "aac"})
_PCM = frozenset({"pcm_s16le", "pcm_mulaw"})
_US_EOT_CONFIDENCE_DEFAULT = 0.4  # SPEC: end_of_turn_confidence_threshold default

_INT = frozenset(
    {
        "sample_rate",
        "min_turn_silence",
        "max_turn_silence",
        "interruption_delay",
        "previous_context_n_turns",
        "max_speakers",
        "speaker_labels_revision_interval_ms",
        "inactivity_timeout",
        "turn_left_pad_ms",
        "min_end_of_turn_silence_when_confident",
    }
)
_FLOAT = frozenset(
    {"vad_threshold", "end_of_turn_confidence_threshold", "voice_focus_threshold"}
    | {"noise_suppression_threshold"}
)
_BOOL = frozenset(
    {
        "format_turns",
        "speaker_labels",
        "redact_pii",
        "filter_profanity",
        "language_detection",
        "continuous_partials",
        "session_heartbeat",
        "include_partial_turns",
        "customer_support_audio_capture",
        "acknowledge_silence",
    }
)
_LIST = frozenset({"keyterms_prompt", "language_codes", "redact_pii_policies"})
_OBJECT = frozenset({"llm_gateway"})
_STR = frozenset(
    {
        "speech_model",
        "encoding",
        "mode",
        "prompt",
        "agent_context",
        "domain",
        "voice_focus",
        "noise_suppression_model",
        "redact_pii_sub",
        "language_code",
        "language",
        "webhook_url",
        "webhook_auth_header_name",
        "webhook_auth_header_value",
    }
)
KNOWN_PARAMS = _INT | _FLOAT | _BOOL | _LIST | _OBJECT | _STR
_UNIT_RANGE = frozenset({"vad_threshold", "end_of_turn_confidence_threshold"})


@dataclass(frozen=True)
class Rejection:
    """Refuse the connect / update: ``Error`` frame and close with ``code``."""

    code: int
    message: str
    field: str | None = None


def _limit(name: str) -> int:
    return int(table.LIMITS[name])


def _query_value(name: str, raw: str) -> Any:
    if name in _INT:
        return int(raw)
    if name in _FLOAT:
        return float(raw)
    if name in _BOOL:
        lowered = raw.strip().lower()
        if lowered not in ("true", "false", "1", "0"):
            raise ValueError(f"{raw!r} is not a boolean")
        return lowered in ("true", "1")
    if name in _LIST:
        text = raw.strip()
        if text.startswith("["):
            value = json.loads(text)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError("must be a JSON array of strings")
            return value
        return [part.strip() for part in text.split(",") if part.strip()]
    if name in _OBJECT:
        value = json.loads(raw)
        if not isinstance(value, dict):
            raise ValueError("must be a JSON object")
        return value
    return raw


def _keyterms(terms: list[str], code: int) -> tuple[list[str], Rejection | None]:
    if len(terms) > _limit("keyterms_max_items"):
        return terms, Rejection(
            code,
            f"keyterms_prompt has {len(terms)} terms; at most "
            f"{_limit('keyterms_max_items')} are allowed",
            "keyterms_prompt",
        )
    return [t for t in terms if len(t) <= _limit("keyterm_max_chars")], None


def _text_cap(
    config: Mapping[str, Any], settings: StreamingSettings, code: int
) -> Rejection | None:
    for name, cap in (
        ("prompt", settings.prompt_max_chars),
        ("agent_context", settings.agent_context_max_chars),
    ):
        value = config.get(name)
        if isinstance(value, str) and len(value) > cap:
            return Rejection(code, f"{name} is {len(value)} characters; the maximum is {cap}", name)
    return None


def _ranges(config: Mapping[str, Any], code: int) -> Rejection | None:
    checks = {
        "previous_context_n_turns": (0, _limit("previous_context_n_turns_max")),
        "interruption_delay": (0, _limit("interruption_delay_max_ms")),
        "inactivity_timeout": (
            _limit("inactivity_timeout_min_s"),
            _limit("inactivity_timeout_max_s"),
        ),
        "sample_rate": (_limit("sample_rate_min"), _limit("sample_rate_max")),
        "vad_threshold": (0, 1),
        "end_of_turn_confidence_threshold": (0, 1),
        "min_turn_silence": (0, None),
        "max_turn_silence": (0, None),
    }
    for name, (low, high) in checks.items():
        value = config.get(name)
        if value is None:
            continue
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            return Rejection(code, f"{name}={value} is out of range; expected {bound}", name)
    codes = config.get("language_codes")
    if isinstance(codes, list) and len(codes) > _limit("language_codes_max_items"):
        return Rejection(code, "language_codes has too many entries", "language_codes")
    return None


def _clamp_min_silence(config: Config, model: str) -> None:
    if table.is_u3_pro(model) and "min_turn_silence" in config:
        config["min_turn_silence"] = min(
            _limit("min_turn_silence_max_ms"),
            max(_limit("min_turn_silence_min_ms"), config["min_turn_silence"]),
        )


def parse_connect(
    query: Mapping[str, str], settings: StreamingSettings
) -> tuple[Config, list[str]] | Rejection:
    """Connect query -> (effective config, ignored parameter names) or a rejection."""
    code = settings.connect_error_close_code
    given: Config = {}
    ignored: list[str] = []
    for name, raw in query.items():
        if name == "token":
            continue
        if name not in KNOWN_PARAMS:
            ignored.append(name)
            continue
        try:
            given[name] = _query_value(name, raw)
        except ValueError as exc:
            return Rejection(code, f"Invalid query parameter {name}: {exc}", name)
    # deprecated aliases
    alias = given.pop("min_end_of_turn_silence_when_confident", None)
    if alias is not None:
        given.setdefault("min_turn_silence", alias)
    language_code = given.pop("language_code", None)
    if language_code is not None:
        given.setdefault("language_codes", [language_code])
    for old, new in (
        ("noise_suppression_model", "voice_focus"),
        ("noise_suppression_threshold", "voice_focus_threshold"),
    ):
        value = given.pop(old, None)
        if value is not None:
            given.setdefault(new, value)

    model = given.pop("speech_model", None)
    if model is None:
        if settings.require_speech_model:
            return Rejection(code, "speech_model is required", "speech_model")
        model = settings.default_speech_model
    if model not in table.ALL_MODELS:
        return Rejection(code, f"Invalid speech_model: {model}", "speech_model")
    encoding = given.pop("encoding", "pcm_s16le")
    if encoding not in ENCODINGS:
        return Rejection(code, f"Invalid encoding: {encoding}", "encoding")
    if encoding in _PCM and "sample_rate" not in given:
        return Rejection(code, f"sample_rate is required for {encoding}", "sample_rate")

    u3 = table.is_u3_pro(model)
    if not u3:
        for name in sorted(table.U3_ONLY_PARAMS & given.keys()):
            if name in ("prompt", "agent_context") or settings.strict_u3_params_at_connect:
                return Rejection(code, f"{name} is not supported by model {model}", name)
            del given[name]
            ignored.append(name)
    rejection = _text_cap(given, settings, code) or _ranges(given, code)
    if rejection is not None:
        return rejection
    if "keyterms_prompt" in given:
        given["keyterms_prompt"], rejection = _keyterms(given["keyterms_prompt"], code)
        if rejection is not None:
            return rejection

    config: Config = {"speech_model": model, "encoding": encoding}
    if "sample_rate" in given:
        config["sample_rate"] = given.pop("sample_rate")
    if u3:
        mode = given.get("mode", "balanced")
        if mode not in table.MODE_PRESETS:
            return Rejection(code, f"Invalid mode: {mode}", "mode")
        config["mode"] = mode
        config.update(table.MODE_PRESETS[mode])
        config["continuous_partials"] = True
        config["previous_context_n_turns"] = settings.carryover_depth
    else:
        config.update(table.US_DEFAULTS)
        config["end_of_turn_confidence_threshold"] = _US_EOT_CONFIDENCE_DEFAULT
        config["format_turns"] = False
    config["session_heartbeat"] = False
    config.update(given)
    _clamp_min_silence(config, model)
    return config, ignored


@dataclass
class UpdateResult:
    config: Config
    applied: dict[str, Any] = field(default_factory=dict)
    stripped: list[str] = field(default_factory=list)  # U3-only fields on a non-U3 model
    ignored: list[str] = field(default_factory=list)  # unknown or connect-only fields
    rejection: Rejection | None = None


def _update_value(name: str, value: Any) -> Any:
    """Type-check one update field; raises ValueError with a human message."""
    if name in _INT:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be an integer")
        if isinstance(value, float) and not value.is_integer():
            raise ValueError("must be an integer")
        return int(value)
    if name in _FLOAT:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a number")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            raise ValueError("must be a finite number") from None
        if not math.isfinite(number):
            raise ValueError("must be a finite number")
        return number
    if name in _BOOL:
        if not isinstance(value, bool):
            raise ValueError("must be a boolean")
        return value
    if name in _LIST:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("must be an array of strings")
        return list(value)
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def apply_update(
    config: Config, message: Mapping[str, Any], settings: StreamingSettings
) -> UpdateResult:
    """Delta-merge an ``UpdateConfiguration`` (fields omitted keep their values)."""
    code = settings.update_error_close_code
    model = str(config["speech_model"])
    u3 = table.is_u3_pro(model)
    result = UpdateResult(config=config)
    delta: Config = {}
    for name, value in message.items():
        if name == "type":
            continue
        if name not in table.UPDATABLE_PARAMS:
            result.ignored.append(name)
            continue
        if name in table.U3_ONLY_PARAMS and not u3:
            result.stripped.append(name)
            continue
        try:
            delta[name] = _update_value(name, value)
        except ValueError as exc:
            result.rejection = Rejection(code, f"Invalid Message: {name} {exc}", name)
            return result
    alias = delta.pop("min_end_of_turn_silence_when_confident", None)
    if alias is not None:
        delta.setdefault("min_turn_silence", alias)
    if "mode" in delta and delta["mode"] not in table.MODE_PRESETS:
        result.rejection = Rejection(code, f"Invalid mode: {delta['mode']}", "mode")
        return result
    rejection = _text_cap(delta, settings, code) or _ranges(delta, code)
    if rejection is None and "keyterms_prompt" in delta:
        delta["keyterms_prompt"], rejection = _keyterms(delta["keyterms_prompt"], code)
    if rejection is not None:
        result.rejection = rejection
        return result
    if not delta:
        return result
    new = dict(config)
    if "mode" in delta:
        new.update(table.MODE_PRESETS[delta["mode"]])
    new.update(delta)
    _clamp_min_silence(new, model)
    result.config = new
    result.applied = delta
    return result
