"""Hypothesis strategies shared by the fuzz suites: hostile JSON-like values, valid policy
documents and mutations of them, wire frames.

Hostile means: lone surrogates (valid JSON via ``\\udXXX`` escapes, not encodable as UTF-8),
control characters, huge and negative integers, non-finite floats, deep nesting, wrong types
everywhere a value is expected.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Final

from hypothesis import strategies as st

from policies.fields import FIELDS

__all__ = [
    "HOSTILE_TEXT",
    "HUGE_INTS",
    "json_values",
    "mutated_policies",
    "text",
    "valid_policies",
    "wire_text",
]

# lone surrogates, NUL and friends, bidi overrides, a non-BMP character
_HOSTILE_CHARS: Final = ["\ud800", "\udfff", "\udc80", "\x00", "\x1b", "\u202e", "\n", "😀", "é"]
HOSTILE_TEXT: Final = st.lists(
    st.sampled_from(_HOSTILE_CHARS) | st.characters(), min_size=1, max_size=12
).map("".join)

text = st.text(max_size=30) | HOSTILE_TEXT

HUGE_INTS: Final = st.sampled_from(
    [2**31, 2**53 + 1, 2**63, 2**64 + 1, -(2**63), 10**30, 10**400, -(10**400)]
)
_NUMBERS: Final = (
    st.integers(-(2**40), 2**40)
    | HUGE_INTS
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0, -1, 1, 0.5, 1e308, -1e308, 5e-324])
)

json_scalars: Final = st.none() | st.booleans() | _NUMBERS | text


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Any JSON-like value (dict keys are text), hostile scalars included."""
    return st.recursive(
        json_scalars,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4)
        ),
        max_leaves=max_leaves,
    )


# -- policy documents ---------------------------------------------------------------------------

_ID = st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True)
_LABEL = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,10}", fullmatch=True)
_LABEL_VALUE = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)
_KEYTERM = st.from_regex(r"[A-Za-z][A-Za-z0-9 ]{0,20}", fullmatch=True)
_SILENCE = st.integers(50, 10_000)


@st.composite
def _config(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if draw(st.booleans()):
        out["prompt"] = draw(st.text(st.characters(codec="utf-8"), max_size=60))
    if draw(st.booleans()):
        out["system_prompt"] = draw(st.text(st.characters(codec="utf-8"), max_size=60))
    if draw(st.booleans()):
        out["keyterms"] = draw(st.lists(_KEYTERM, max_size=5))
    if draw(st.booleans()):
        low, high = sorted([draw(_SILENCE), draw(_SILENCE)])
        out["min_turn_silence_ms"] = low
        out["max_turn_silence_ms"] = high
    if draw(st.booleans()):
        out["vad_threshold"] = draw(st.floats(0, 1))
    return out


@st.composite
def valid_policies(draw: st.DrawFn) -> dict[str, Any]:
    """A policy document ``parse_policy`` accepts (every optional block sometimes present)."""
    doc: dict[str, Any] = {"id": draw(_ID)}
    if draw(st.booleans()):
        doc["version"] = draw(st.integers(1, 10_000))
    if draw(st.booleans()):
        doc["priority"] = draw(st.integers(-1_000_000, 1_000_000))
    if draw(st.booleans()):
        match: dict[str, Any] = {}
        if draw(st.booleans()):
            match["kind"] = draw(
                st.sampled_from(["streaming-v3", "voice-agent-v1", ["streaming-v3"]])
            )
        if draw(st.booleans()):
            match["labels"] = draw(st.dictionaries(_LABEL, _LABEL_VALUE, max_size=3))
        doc["match"] = match
    config = draw(_config())
    doc["set"] = config
    if config and draw(st.booleans()):
        doc["lock"] = draw(st.lists(st.sampled_from(sorted(config)), unique=True))
    if draw(st.booleans()):
        doc["rollout"] = {"percent": draw(st.integers(0, 100))}
    if draw(st.booleans()):
        first = draw(st.integers(0, 100))
        doc["experiment"] = {
            "key": draw(_ID),
            "variants": [
                {"name": "a", "weight": first, "set": {}},
                {"name": "b", "weight": 100 - first, "set": {"agent_context": "x"}},
            ],
        }
    if draw(st.booleans()):
        doc["apply"] = draw(st.sampled_from(["immediate", "next_turn"]))
    if draw(st.booleans()):
        doc["guard"] = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "enabled": st.booleans(),
                    "max_failure_ratio": st.floats(0, 1, exclude_max=True),
                    "min_sessions": st.integers(1, 1_000_000),
                    "window_s": st.floats(0, 86_400, exclude_min=True),
                    "on_breach": st.sampled_from(["halt", "rollback"]),
                },
            )
        )
    return doc


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out.extend(_paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out.extend(_paths(item, (*prefix, i)))
    return out


_KNOWN_KEYS: Final = [
    *FIELDS,
    "id",
    "version",
    "priority",
    "description",
    "match",
    "set",
    "lock",
    "rollout",
    "experiment",
    "apply",
    "apply_deadline_s",
    "kind",
    "model",
    "labels",
    "labels_absent",
    "labels_not",
    "percent",
    "salt",
    "bucket_by",
    "key",
    "variants",
    "name",
    "weight",
]


@st.composite
def mutated_policies(draw: st.DrawFn, max_edits: int = 4) -> dict[str, Any]:
    """A valid document with a few edits: replace, delete, add, retype a node."""
    doc = copy.deepcopy(draw(valid_policies()))
    for _ in range(draw(st.integers(1, max_edits))):
        path = draw(st.sampled_from(_paths(doc)))
        parent: Any = doc
        for step in path[:-1]:
            parent = parent[step]
        edit = draw(st.sampled_from(["replace", "delete", "add", "wrap", "stringify"]))
        if not path:  # the root itself
            if edit == "add":
                doc[draw(st.sampled_from(_KNOWN_KEYS) | text)] = draw(json_values())
            continue
        last = path[-1]
        current = parent[last]
        if edit == "replace":
            parent[last] = draw(json_values() | HUGE_INTS | HOSTILE_TEXT)
        elif edit == "delete":
            del parent[last]
        elif edit == "add" and isinstance(current, dict):
            current[draw(st.sampled_from(_KNOWN_KEYS) | text)] = draw(json_values())
        elif edit == "add" and isinstance(current, list):
            current.append(draw(json_values()))
        elif edit == "wrap":
            parent[last] = [current]
        elif edit == "stringify":
            parent[last] = json.dumps(current)
    return doc


# -- wire frames --------------------------------------------------------------------------------


def wire_text(obj: Any) -> str:
    """JSON text the way a hostile client writes it: NaN allowed, surrogates escaped."""
    return json.dumps(obj, allow_nan=True)
