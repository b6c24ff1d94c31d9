"""Voice Agent ``session`` object: validation, deep merge and mutability (pure functions).

Dicts merge key by key; arrays (``tools``, ``input.keyterms``, ...) replace. The resolved config
always has every default filled in (``DEFAULT_CONFIG`` from the dialect table), and
``format.sample_rate`` follows the encoding (24 kHz PCM, 8 kHz G.711).

Shared: the emulator runs it as the upstream (``emulator.agent_config`` re-exports it), the
gateway runs it to predict what each ``session.update`` will make the upstream echo
(``voice_agent_v1_upstream``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from sessions.dialects import voice_agent_v1_table as table

__all__ = [
    "MISSING",
    "TABLE_SETTINGS",
    "AgentSettings",
    "ConfigProblem",
    "default_config",
    "get_path",
    "immutable_changes",
    "merge",
    "resolve_formats",
    "touched_paths",
    "validate",
    "without_paths",
]

Config = dict[str, Any]


class AgentSettings(Protocol):
    """The disputed values the model needs (the emulator's settings satisfy it)."""

    @property
    def default_voice(self) -> str: ...
    @property
    def voices(self) -> frozenset[str]: ...
    @property
    def transcription_prompt_max_chars(self) -> int: ...


@dataclass(frozen=True)
class _TableSettings:
    default_voice: str = str(table.DEFAULT_CONFIG["output"]["voice"])  # type: ignore[index]
    voices: frozenset[str] = table.VOICES
    transcription_prompt_max_chars: int = int(table.LIMITS["transcription_prompt_max_chars"])


TABLE_SETTINGS: AgentSettings = _TableSettings()

ENCODINGS = frozenset({"audio/pcm", "audio/pcmu", "audio/pcma"})
TRANSCRIPTION_MODES = frozenset({"min_latency", "balanced", "max_accuracy"})
VOICE_FOCUS = frozenset({"near-field", "far-field"})
EXECUTION_MODES = frozenset({"interactive", "hold"})


@dataclass(frozen=True)
class ConfigProblem:
    code: str  # a table.ERROR_CODES member
    message: str
    param: str

    def __post_init__(self) -> None:
        assert self.code in table.ERROR_CODES, self.code


def _limit(name: str) -> float:
    return float(table.LIMITS[name])


def default_config(settings: AgentSettings) -> Config:
    config: Config = copy.deepcopy(dict(table.DEFAULT_CONFIG))
    config["output"]["voice"] = settings.default_voice
    return config


def touched_paths(session: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted leaf paths an update sets (dicts recurse, everything else is a leaf)."""
    paths: list[str] = []
    for key, value in session.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            paths.extend(touched_paths(value, path + "."))
        else:
            paths.append(path)
    return paths


def merge(config: Mapping[str, Any], session: Mapping[str, Any]) -> Config:
    """A new config with ``session`` deep-merged in (arrays replace)."""
    out: Config = dict(config)
    for key, value in session.items():
        current = out.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            out[key] = merge(current, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_formats(config: Config) -> Config:
    for side in ("input", "output"):
        block = config.get(side)
        if isinstance(block, dict) and isinstance(block.get("format"), dict):
            fmt = dict(block["format"])
            pcm = fmt.get("encoding", "audio/pcm") == "audio/pcm"
            fmt["sample_rate"] = int(
                _limit("input_sample_rate_pcm") if pcm else _limit("input_sample_rate_g711")
            )
            config[side] = {**block, "format": fmt}
    return config


MISSING: Final[Any] = object()


def get_path(config: Mapping[str, Any], path: tuple[str, ...], default: Any = MISSING) -> Any:
    """The value at ``path`` (keys into nested objects), or ``default`` where a key is absent
    or a step is not an object (``MISSING`` unless given: absent then differs from null)."""
    node: Any = config
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


def immutable_changes(config: Mapping[str, Any], session: Mapping[str, Any]) -> list[str]:
    """Immutable paths (``table.IMMUTABLE_PATHS``) whose value this update would change."""
    merged = resolve_formats(merge(config, session))
    changed: list[str] = []
    touched = touched_paths(session)
    for path in sorted(table.IMMUTABLE_PATHS):
        dotted = ".".join(path)
        if not any(t == dotted or t.startswith(dotted + ".") for t in touched):
            continue
        if get_path(merged, path, None) != get_path(config, path, None):
            changed.append(dotted)
    return changed


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bad(param: str, message: str, code: str = "invalid_value") -> ConfigProblem:
    return ConfigProblem(code, message, param)


def validate(session: Any, settings: AgentSettings) -> ConfigProblem | None:
    """The first problem in a ``session`` object, or None."""
    if not isinstance(session, Mapping):
        return _bad("session", "session must be an object", "invalid_config")
    checks = (
        _check_scalars(session),
        _check_tools(session.get("tools")) if "tools" in session else None,
        _check_input(session.get("input"), settings) if "input" in session else None,
        _check_output(session.get("output"), settings) if "output" in session else None,
    )
    return next((problem for problem in checks if problem is not None), None)


def _check_scalars(session: Mapping[str, Any]) -> ConfigProblem | None:
    for name in ("system_prompt", "agent_id"):
        if name in session and not isinstance(session[name], str):
            return _bad(name, f"{name} must be a string")
    greeting = session.get("greeting")
    if greeting is not None and not isinstance(greeting, str):
        return _bad("greeting", "greeting must be a string or null")
    for name in ("llm", "pre_connect_requests"):
        if name in session and not isinstance(session[name], list):
            return _bad(name, f"{name} must be an array")
    webhook = session.get("webhook")
    if webhook is not None and (not isinstance(webhook, Mapping) or "url" not in webhook):
        return _bad("webhook", "webhook must be an object with a url", "invalid_webhook")
    return None


def _check_tools(tools: Any) -> ConfigProblem | None:
    if not isinstance(tools, list):
        return _bad("tools", "tools must be an array", "invalid_config")
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping):
            return _bad(where, "each tool must be an object", "invalid_config")
        if tool.get("type") != "function":
            return _bad(f"{where}.type", 'tool type must be "function"', "invalid_config")
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            return _bad(f"{where}.name", "tool name must be a non-empty string", "invalid_config")
        if "description" in tool and not isinstance(tool["description"], str):
            return _bad(f"{where}.description", "description must be a string")
        if "parameters" in tool and not isinstance(tool["parameters"], Mapping):
            return _bad(f"{where}.parameters", "parameters must be a JSON Schema object")
        mode = tool.get("execution_mode", "interactive")
        if mode not in EXECUTION_MODES:
            return _bad(f"{where}.execution_mode", "execution_mode must be interactive or hold")
        timeout = tool.get("timeout_seconds", _limit("tool_timeout_default_s"))
        low, high = _limit("tool_timeout_min_s"), _limit("tool_timeout_max_s")
        if not _number(timeout) or not low <= timeout <= high:
            return _bad(f"{where}.timeout_seconds", f"timeout_seconds must be {low:g}-{high:g}")
    return None


def _check_format(fmt: Any, param: str) -> ConfigProblem | None:
    if not isinstance(fmt, Mapping):
        return _bad(param, "format must be an object")
    encoding = fmt.get("encoding", "audio/pcm")
    if encoding not in ENCODINGS:
        return _bad(f"{param}.encoding", f"encoding must be one of {', '.join(sorted(ENCODINGS))}")
    if "sample_rate" in fmt:
        rate = fmt["sample_rate"]
        if encoding != "audio/pcm" or rate != _limit("input_sample_rate_pcm"):
            return _bad(
                f"{param}.sample_rate",
                f"sample_rate is only allowed with audio/pcm and must be "
                f"{int(_limit('input_sample_rate_pcm'))}",
            )
    return None


def _check_input(block: Any, settings: AgentSettings) -> ConfigProblem | None:
    if not isinstance(block, Mapping):
        return _bad("input", "input must be an object")
    if "format" in block:
        problem = _check_format(block["format"], "input.format")
        if problem:
            return problem
    keyterms = block.get("keyterms", [])
    if not isinstance(keyterms, list) or not all(isinstance(k, str) for k in keyterms):
        return _bad("input.keyterms", "keyterms must be an array of strings")
    if len(keyterms) > _limit("keyterms_max_items"):
        return _bad("input.keyterms", f"at most {int(_limit('keyterms_max_items'))} keyterms")
    prompt = block.get("transcription_prompt", "")
    if not isinstance(prompt, str):
        return _bad("input.transcription_prompt", "transcription_prompt must be a string")
    if len(prompt) > settings.transcription_prompt_max_chars:
        return _bad(
            "input.transcription_prompt",
            f"transcription_prompt is {len(prompt)} characters; the maximum is "
            f"{settings.transcription_prompt_max_chars}",
        )
    if block.get("transcription_mode", "balanced") not in TRANSCRIPTION_MODES:
        return _bad("input.transcription_mode", "unknown transcription_mode")
    if block.get("voice_focus", "near-field") not in VOICE_FOCUS:
        return _bad("input.voice_focus", "voice_focus must be near-field or far-field")
    td = block.get("turn_detection", {})
    if not isinstance(td, Mapping):
        return _bad("input.turn_detection", "turn_detection must be an object")
    vad = td.get("vad_threshold", 0.5)
    if not _number(vad) or not 0 <= vad <= 1:
        return _bad("input.turn_detection.vad_threshold", "vad_threshold must be within 0-1")
    for name in ("min_silence", "max_silence"):
        value = td.get(name, 0)
        if not _number(value) or value < 0:
            return _bad(f"input.turn_detection.{name}", f"{name} must be a number of ms >= 0")
    if not isinstance(td.get("interrupt_response", True), bool):
        return _bad("input.turn_detection.interrupt_response", "must be a boolean")
    return None


def _check_output(block: Any, settings: AgentSettings) -> ConfigProblem | None:
    if not isinstance(block, Mapping):
        return _bad("output", "output must be an object")
    if "voice" in block:
        voice = block["voice"]
        if voice in table.REMOVED_VOICES:
            return _bad("output.voice", f"voice {voice!r} has been removed")
        if voice not in settings.voices:
            return _bad("output.voice", f"unknown voice {voice!r}")
    if "format" in block:
        problem = _check_format(block["format"], "output.format")
        if problem:
            return problem
    volume = block.get("volume", 100)
    low, high = _limit("volume_min"), _limit("volume_max")
    if not _number(volume) or not low <= volume <= high:
        return _bad("output.volume", f"volume must be within {low:g}-{high:g}")
    return None


def without_paths(body: Mapping[str, Any], paths: list[str]) -> dict[str, Any]:
    """A deep copy of ``body`` minus the given dotted paths (what an upstream that refuses
    some fields of an update applies: the rest)."""
    out: dict[str, Any] = copy.deepcopy(dict(body))
    for path in paths:
        keys = path.split(".")
        node: Any = out
        for key in keys[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(keys[-1], None)
    return out
