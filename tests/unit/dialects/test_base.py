"""Dialect registry and the shared canonical <-> JSON value rules."""

from __future__ import annotations

from typing import Any

import pytest

from policies.fields import FIELDS
from sessions.dialects import dialect_for
from sessions.dialects.base import clear_value, ordered_fields, to_canonical, to_wire
from sessions.dialects.streaming_v3 import STREAMING_V3
from sessions.dialects.voice_agent_v1 import VOICE_AGENT_V1
from sessions.errors import DialectError


@pytest.mark.parametrize(
    ("kind", "dialect", "acknowledges"),
    [("streaming-v3", STREAMING_V3, False), ("voice-agent-v1", VOICE_AGENT_V1, True)],
)
def test_dialect_for(kind: str, dialect: object, acknowledges: bool) -> None:
    found = dialect_for(kind)
    assert found is dialect
    assert found.name == kind
    assert found.acknowledges is acknowledges


def test_dialect_for_unknown_kind() -> None:
    with pytest.raises(DialectError, match="openai-realtime") as caught:
        dialect_for("openai-realtime")
    assert "streaming-v3" in str(caught.value)


def test_ordered_fields_follows_canonical_order_unknown_last() -> None:
    given = ["vad_threshold", "zeta", "prompt", "keyterms", "alpha"]
    assert ordered_fields(given) == ["prompt", "keyterms", "vad_threshold", "zeta", "alpha"]
    assert ordered_fields(reversed(list(FIELDS))) == list(FIELDS)


@pytest.mark.parametrize(
    ("name", "raw", "value"),
    [
        ("prompt", "", None),
        ("prompt", "hi", "hi"),
        ("keyterms", [], None),
        ("keyterms", ["a", "b"], ("a", "b")),
        ("keyterms", ["x" * 80], ("x" * 80,)),  # over-limit is the upstream's business
        ("min_turn_silence_ms", 300.0, 300),
        ("vad_threshold", 1, 1.0),
    ],
)
def test_to_canonical(name: str, raw: Any, value: Any) -> None:
    assert to_canonical("d", name, "w", raw) == value


@pytest.mark.parametrize(
    ("name", "raw"),
    [("prompt", []), ("keyterms", ""), ("keyterms", [1]), ("vad_threshold", False)],
)
def test_to_canonical_type_errors_name_the_wire_field(name: str, raw: Any) -> None:
    with pytest.raises(DialectError) as caught:
        to_canonical("d", name, "wire.name", raw)
    assert (caught.value.dialect, caught.value.field) == ("d", "wire.name")


def test_to_wire_and_clear_value() -> None:
    assert to_wire(("a", "b")) == ["a", "b"]
    assert to_wire(0.5) == 0.5
    assert (clear_value("prompt"), clear_value("keyterms")) == ("", [])
    with pytest.raises(ValueError, match="vad_threshold"):
        clear_value("vad_threshold")
