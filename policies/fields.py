"""Canonical configuration fields (DESIGN.md §3) and their value rules.

A *config* is a plain ``dict[str, Value]`` keyed by canonical field name; an absent key means
"unset" (the upstream's own default). A *delta* is a ``dict[str, Value | None]`` where ``None``
means "unset this field" (revert to the upstream default). Values are never ``None`` inside a
config.

The limits here are the canonical (strictest shared) ones; each dialect in
``sessions.dialects`` also carries its own wire table and may be stricter per model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from policies.errors import PolicyValidationError, Violation

__all__ = [
    "FIELDS",
    "FIELD_NAMES",
    "MAX_KEYTERMS",
    "MAX_KEYTERM_CHARS",
    "MAX_PROMPT_CHARS",
    "MAX_SYSTEM_PROMPT_CHARS",
    "Config",
    "Delta",
    "FieldSpec",
    "Value",
    "check_value",
    "printable",
    "to_json",
    "utf8_problem",
    "validate_config",
]

Value = str | int | float | tuple[str, ...]
Config = dict[str, Value]
Delta = dict[str, Value | None]

MAX_PROMPT_CHARS: Final = 1750  # prompt / agent_context / transcription_prompt (PROTOCOLS §1.10)
MAX_SYSTEM_PROMPT_CHARS: Final = 20_000  # not capped by the API; our own sanity bound
MAX_KEYTERMS: Final = 100
MAX_KEYTERM_CHARS: Final = 50
MIN_TURN_SILENCE_MS: Final = 50
MAX_TURN_SILENCE_MS: Final = 10_000  # U3 clamps min_turn_silence to 50–10000 ms


@dataclass(frozen=True)
class FieldSpec:
    """Value rule for one canonical field."""

    name: str
    kind: str  # "str" | "int" | "float" | "str_list"
    description: str
    max_chars: int | None = None
    min_value: float | None = None
    max_value: float | None = None
    max_items: int | None = None
    max_item_chars: int | None = None


FIELDS: Final[Mapping[str, FieldSpec]] = {
    spec.name: spec
    for spec in (
        FieldSpec("prompt", "str", "transcription prompt", max_chars=MAX_PROMPT_CHARS),
        FieldSpec("system_prompt", "str", "agent instructions", max_chars=MAX_SYSTEM_PROMPT_CHARS),
        FieldSpec("agent_context", "str", "agent's last reply", max_chars=MAX_PROMPT_CHARS),
        FieldSpec(
            "keyterms",
            "str_list",
            "boosted terms",
            max_items=MAX_KEYTERMS,
            max_item_chars=MAX_KEYTERM_CHARS,
        ),
        FieldSpec(
            "min_turn_silence_ms",
            "int",
            "silence before a turn may end",
            min_value=MIN_TURN_SILENCE_MS,
            max_value=MAX_TURN_SILENCE_MS,
        ),
        FieldSpec(
            "max_turn_silence_ms",
            "int",
            "silence that forces a turn to end",
            min_value=MIN_TURN_SILENCE_MS,
            max_value=MAX_TURN_SILENCE_MS,
        ),
        FieldSpec("vad_threshold", "float", "speech threshold", min_value=0.0, max_value=1.0),
    )
}
FIELD_NAMES: Final = frozenset(FIELDS)


def utf8_problem(text: str) -> str | None:
    """Why ``text`` cannot be written as UTF-8, or ``None``.

    JSON may spell a lone surrogate (``"\\ud800"``); Python then holds a string that no UTF-8
    writer (the version log, NATS, a WebSocket frame) can encode. Such text is refused at the
    boundary instead of failing later, half-way through a push.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"is not valid Unicode text: lone surrogate U+{ord(text[exc.start]):04X} "
            f"at index {exc.start}"
        )
    return None


def printable(text: str) -> str:
    """``text`` with lone surrogates escaped (``\\ud800``): safe in a message or a path."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def check_value(name: str, value: Any, path: str | None = None) -> tuple[Value, list[Violation]]:
    """Normalise one canonical value; returns (normalised, violations).

    Lists become tuples (hashable, immutable). ``bool`` is refused where a number is expected,
    text that is not valid Unicode (a lone surrogate) with rule ``encoding``.
    """
    where = printable(str(path or name))
    spec = FIELDS.get(name)
    if spec is None:
        known = ", ".join(sorted(FIELDS))
        return value, [Violation(where, "unknown_field", f"unknown field (known: {known})")]
    problems: list[Violation] = []
    if spec.kind == "str":
        if not isinstance(value, str):
            return value, [Violation(where, "type", f"must be a string, got {_tname(value)}")]
        bad = utf8_problem(value)
        if bad is not None:
            return value, [Violation(where, "encoding", bad)]
        if spec.max_chars is not None and len(value) > spec.max_chars:
            problems.append(
                Violation(
                    where,
                    "max_chars",
                    f"is {len(value)} characters, limit is {spec.max_chars}",
                    spec.max_chars,
                )
            )
        return value, problems
    if spec.kind == "str_list":
        if isinstance(value, str) or not isinstance(value, list | tuple):
            return value, [
                Violation(where, "type", f"must be a list of strings, got {_tname(value)}")
            ]
        if spec.max_items is not None and len(value) > spec.max_items:
            problems.append(
                Violation(
                    where,
                    "max_items",
                    f"has {len(value)} items, limit is {spec.max_items}",
                    spec.max_items,
                )
            )
        for i, item in enumerate(value):
            if not isinstance(item, str):
                problems.append(Violation(f"{where}[{i}]", "type", "must be a string"))
            elif (bad := utf8_problem(item)) is not None:
                problems.append(Violation(f"{where}[{i}]", "encoding", bad))
            elif not item.strip():
                problems.append(Violation(f"{where}[{i}]", "empty", "must not be empty"))
            elif spec.max_item_chars is not None and len(item) > spec.max_item_chars:
                problems.append(
                    Violation(
                        f"{where}[{i}]",
                        "max_item_chars",
                        f"is {len(item)} characters, limit is {spec.max_item_chars}",
                        spec.max_item_chars,
                    )
                )
        return tuple(value), problems
    # numbers
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value, [Violation(where, "type", f"must be a number, got {_tname(value)}")]
    if spec.kind == "int":
        if isinstance(value, float):
            if not value.is_integer():
                return value, [Violation(where, "type", "must be a whole number of milliseconds")]
            value = int(value)
    else:
        try:
            as_float = float(value)
        except OverflowError:  # an integer beyond any float: out of every range
            rule, limit = ("max", spec.max_value) if value > 0 else ("min", spec.min_value)
            return value, [Violation(where, rule, f"is out of range ({rule}imum is {limit:g})",
                                     limit)]  # fmt: skip
        if not math.isfinite(as_float):
            return value, [Violation(where, "type", "must be a finite number")]
        value = as_float
    if spec.min_value is not None and value < spec.min_value:
        problems.append(
            Violation(where, "min", f"is {value}, minimum is {spec.min_value:g}", spec.min_value)
        )
    if spec.max_value is not None and value > spec.max_value:
        problems.append(
            Violation(where, "max", f"is {value}, maximum is {spec.max_value:g}", spec.max_value)
        )
    return value, problems


def validate_config(raw: Mapping[str, Any], path: str = "set") -> Config:
    """Validate and normalise a canonical config mapping; raises PolicyValidationError."""
    out: Config = {}
    problems: list[Violation] = []
    for name, value in raw.items():
        normalised, found = check_value(name, value, f"{path}.{name}")
        problems.extend(found)
        if not found:
            out[name] = normalised
    if problems:
        raise PolicyValidationError(problems)
    return out


def _tname(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def to_json(config: Mapping[str, Value | None]) -> dict[str, Any]:
    """A config or delta as plain JSON values (tuples become lists; order kept)."""
    return {name: list(v) if isinstance(v, tuple) else v for name, v in config.items()}
