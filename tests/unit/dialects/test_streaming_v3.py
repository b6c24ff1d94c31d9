"""Streaming v3 codec: golden frames, skips, unset defaults, connect query, stripping, events."""

from __future__ import annotations

import json
from typing import Any

import pytest

from policies.fields import FIELDS, Config, Delta
from sessions.dialects.base import (
    Ended,
    Fatal,
    Other,
    Ready,
    TurnBoundary,
    UpstreamEvent,
    Warned,
)
from sessions.dialects.streaming_v3 import STREAMING_V3
from sessions.dialects.streaming_v3_table import (
    DEFAULT_MODE,
    DEFAULT_SPEECH_MODEL,
    LIMITS,
    MODE_PRESETS,
    US_DEFAULTS,
)
from sessions.errors import DialectError

U3 = "universal-3-5-pro"
US = "universal-streaming-english"
PROMPT_SKIP = (
    "prompt: model universal-streaming-english does not accept prompt (U3-Pro family only)"
)
AGENT_CONTEXT_SKIP = (
    "agent_context: model universal-streaming-english does not accept agent_context"
    " (U3-Pro family only)"
)
SYSTEM_PROMPT_SKIP = (
    "system_prompt: streaming-v3 has no system_prompt (agent instructions are Voice Agent only)"
)


# --- encode -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delta", "model", "wire"),
    [
        pytest.param(
            # deliberately not in canonical order: the frame must be
            {
                "vad_threshold": 0.3,
                "max_turn_silence_ms": 2000,
                "keyterms": ("Acme", "OrderPro"),
                "agent_context": "What date would you like?",
                "min_turn_silence_ms": 200,
                "prompt": "Transcribe order numbers.",
            },
            U3,
            '{"type": "UpdateConfiguration", "prompt": "Transcribe order numbers.", '
            '"agent_context": "What date would you like?", "keyterms_prompt": ["Acme", '
            '"OrderPro"], "min_turn_silence": 200, "max_turn_silence": 2000, '
            '"vad_threshold": 0.3}',
            id="every-field-u3",
        ),
        pytest.param(
            {"max_turn_silence_ms": 5000, "keyterms": ("account number", "routing number")},
            U3,
            '{"type": "UpdateConfiguration", "keyterms_prompt": ["account number", '
            '"routing number"], "max_turn_silence": 5000}',
            id="protocols-example",
        ),
        pytest.param(
            {"agent_context": "Sure — what date?"},
            "u3-rt-pro",
            '{"type": "UpdateConfiguration", "agent_context": "Sure \\u2014 what date?"}',
            id="agent-context-only",
        ),
        pytest.param(
            {"prompt": None, "keyterms": None},
            U3,
            '{"type": "UpdateConfiguration", "prompt": "", "keyterms_prompt": []}',
            id="clears",
        ),
        pytest.param(
            {"keyterms": ("Acme",), "prompt": "x", "agent_context": "y", "system_prompt": "z"},
            US,
            '{"type": "UpdateConfiguration", "keyterms_prompt": ["Acme"]}',
            id="us-keeps-keyterms-only",
        ),
    ],
)
def test_encode_golden(delta: Delta, model: str, wire: str) -> None:
    encoded = STREAMING_V3.encode(delta, model)
    assert encoded.message is not None
    assert json.dumps(encoded.message) == wire


def test_u3_only_fields_skipped_on_universal_streaming_keyterms_still_sent() -> None:
    encoded = STREAMING_V3.encode(
        {"prompt": "Medical terms.", "agent_context": "Hello!", "keyterms": ("aspirin",)}, US
    )
    assert encoded.message == {"type": "UpdateConfiguration", "keyterms_prompt": ["aspirin"]}
    assert dict(encoded.skipped) == {"prompt": PROMPT_SKIP, "agent_context": AGENT_CONTEXT_SKIP}
    assert encoded.sent_fields == ("keyterms",)


@pytest.mark.parametrize("model", [U3, US])
def test_system_prompt_always_skipped(model: str) -> None:
    encoded = STREAMING_V3.encode({"system_prompt": "Be brief."}, model)
    assert encoded.message is None
    assert dict(encoded.skipped) == {"system_prompt": SYSTEM_PROMPT_SKIP}
    assert encoded.sent_fields == ()


def test_unset_of_u3_only_field_is_skipped_on_universal_streaming() -> None:
    encoded = STREAMING_V3.encode({"prompt": None}, US)
    assert encoded.message is None
    assert dict(encoded.skipped) == {"prompt": PROMPT_SKIP}


def test_unknown_field_skipped_and_empty_delta_sends_nothing() -> None:
    encoded = STREAMING_V3.encode({"temperature": 0.2, "vad_threshold": 0.5}, U3)
    assert encoded.message == {"type": "UpdateConfiguration", "vad_threshold": 0.5}
    assert dict(encoded.skipped) == {"temperature": "temperature: not a canonical field"}
    assert STREAMING_V3.encode({}, U3).message is None


UNSET_ALL: Delta = dict.fromkeys(name for name in FIELDS if name != "system_prompt")


def test_unset_golden_u3_pro() -> None:
    encoded = STREAMING_V3.encode(UNSET_ALL, U3)
    assert json.dumps(encoded.message) == (
        '{"type": "UpdateConfiguration", "prompt": "", "agent_context": "", '
        '"keyterms_prompt": [], "min_turn_silence": 128, "max_turn_silence": 1280, '
        '"vad_threshold": 0.2}'
    )


@pytest.mark.parametrize(
    ("model", "defaults"),
    [
        ("universal-3-6-pro", MODE_PRESETS[DEFAULT_MODE]),
        ("u3-rt-pro", MODE_PRESETS[DEFAULT_MODE]),
        ("universal-streaming-english", US_DEFAULTS),
        ("universal-streaming-multilingual", US_DEFAULTS),
        ("whisper-rt", US_DEFAULTS),
    ],
)
def test_unset_numbers_take_the_models_table_default(
    model: str, defaults: dict[str, float]
) -> None:
    encoded = STREAMING_V3.encode(UNSET_ALL, model)
    assert encoded.message is not None
    for wire in ("min_turn_silence", "max_turn_silence", "vad_threshold"):
        assert encoded.message[wire] == defaults[wire]
    assert encoded.message["keyterms_prompt"] == []


# --- connect query ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "model", "config"),
    [
        pytest.param(
            {
                "speech_model": "u3-rt-pro",
                "sample_rate": "16000",
                "prompt": "Names.",
                "agent_context": "Hi, how can I help?",
                "keyterms_prompt": '["Acme", "Order Pro"]',
                "min_turn_silence": "160",
                "max_turn_silence": "2400",
                "vad_threshold": "0.45",
            },
            "u3-rt-pro",
            {
                "prompt": "Names.",
                "agent_context": "Hi, how can I help?",
                "keyterms": ("Acme", "Order Pro"),
                "min_turn_silence_ms": 160,
                "max_turn_silence_ms": 2400,
                "vad_threshold": 0.45,
            },
            id="everything",
        ),
        pytest.param({"sample_rate": "16000"}, DEFAULT_SPEECH_MODEL, {}, id="default-model"),
        pytest.param(
            {"speech_model": US, "min_end_of_turn_silence_when_confident": "560"},
            US,
            {"min_turn_silence_ms": 560},
            id="deprecated-alias",
        ),
        pytest.param(
            {"min_turn_silence": "300", "min_end_of_turn_silence_when_confident": "560"},
            DEFAULT_SPEECH_MODEL,
            {"min_turn_silence_ms": 300},
            id="current-name-wins-over-alias",
        ),
        pytest.param(
            {"prompt": "", "keyterms_prompt": "[]", "vad_threshold": "1"},
            DEFAULT_SPEECH_MODEL,
            {"vad_threshold": 1.0},
            id="clearing-values-are-unset",
        ),
        pytest.param(
            {"max_turn_silence": "1500.0"},
            DEFAULT_SPEECH_MODEL,
            {"max_turn_silence_ms": 1500},
            id="integral-float-ms",
        ),
    ],
)
def test_parse_connect_query(query: dict[str, str], model: str, config: Config) -> None:
    info = STREAMING_V3.parse_connect_query(query)
    assert info.model == model
    assert info.client_config == config
    assert dict(info.labels) == {}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"keyterms_prompt": '["Acme", '}, "keyterms_prompt"),
        ({"keyterms_prompt": "Acme,Order"}, "keyterms_prompt"),
        ({"keyterms_prompt": '{"a": 1}'}, "keyterms_prompt"),
        ({"keyterms_prompt": "[1, 2]"}, "keyterms_prompt"),
        ({"vad_threshold": "loud"}, "vad_threshold"),
        ({"vad_threshold": "nan"}, "vad_threshold"),
        ({"min_turn_silence": "12.5"}, "min_turn_silence"),
        (
            {"min_end_of_turn_silence_when_confident": "soon"},
            "min_end_of_turn_silence_when_confident",
        ),
    ],
)
def test_parse_connect_query_rejects_bad_values_naming_the_field(
    query: dict[str, str], field: str
) -> None:
    with pytest.raises(DialectError) as caught:
        STREAMING_V3.parse_connect_query(query)
    assert caught.value.field == field
    assert caught.value.dialect == "streaming-v3"
    assert field in str(caught.value)


def test_merge_connect_query_writes_wire_form_and_leaves_other_params() -> None:
    query = {
        "speech_model": U3,
        "sample_rate": "16000",
        "encoding": "pcm_s16le",
        "keyterms_prompt": '["old"]',
        "min_end_of_turn_silence_when_confident": "400",
    }
    config: Config = {
        "keyterms": ("Acme", "Order Pro"),
        "vad_threshold": 0.5,
        "min_turn_silence_ms": 200,
        "system_prompt": "Be brief.",
    }
    merged, skipped = STREAMING_V3.merge_connect_query(query, config, U3)
    assert merged == {
        "speech_model": U3,
        "sample_rate": "16000",
        "encoding": "pcm_s16le",
        "keyterms_prompt": '["Acme", "Order Pro"]',
        "min_turn_silence": "200",
        "vad_threshold": "0.5",
    }
    assert dict(skipped) == {"system_prompt": SYSTEM_PROMPT_SKIP}
    assert "min_turn_silence" not in query  # the input is not mutated


FULL_CONFIG: Config = {
    "prompt": "Drug names & dosages: 5 mg, 10 mg",
    "system_prompt": "never sent on streaming",
    "agent_context": "Which pharmacy? «Main St» or 5th Ave?",
    "keyterms": ("Zyrtec", "acetaminophen", 'say "hi"'),
    "min_turn_silence_ms": 240,
    "max_turn_silence_ms": 3000,
    "vad_threshold": 0.35,
}


@pytest.mark.parametrize("model", ["universal-3-6-pro", "universal-3-5-pro", US])
def test_merge_connect_query_round_trips(model: str) -> None:
    query = {"speech_model": model, "sample_rate": "8000", "encoding": "pcm_mulaw"}
    merged, skipped = STREAMING_V3.merge_connect_query(query, FULL_CONFIG, model)
    info = STREAMING_V3.parse_connect_query(merged)
    sendable = {k: v for k, v in FULL_CONFIG.items() if k not in skipped}
    assert info.model == model
    assert info.client_config == sendable
    assert {k: merged[k] for k in query} == query
    expected_skips = {"system_prompt"} | ({"prompt", "agent_context"} if model == US else set())
    assert set(skipped) == expected_skips


# --- client updates ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msg", "delta"),
    [
        (
            {
                "type": "UpdateConfiguration",
                "mode": "max_accuracy",
                "prompt": "",
                "keyterms_prompt": [],
                "interruption_delay": 200,
            },
            {"prompt": None, "keyterms": None},
        ),
        (
            {"type": "UpdateConfiguration", "keyterms_prompt": ["a b"], "max_turn_silence": 5000},
            {"keyterms": ("a b",), "max_turn_silence_ms": 5000},
        ),
        (
            {"type": "UpdateConfiguration", "agent_context": "Sure.", "vad_threshold": 0},
            {"agent_context": "Sure.", "vad_threshold": 0.0},
        ),
        (
            {"type": "UpdateConfiguration", "min_end_of_turn_silence_when_confident": 300},
            {"min_turn_silence_ms": 300},
        ),
        ({"type": "UpdateConfiguration", "format_turns": True}, {}),
    ],
)
def test_parse_client_update(msg: dict[str, Any], delta: Delta) -> None:
    assert STREAMING_V3.parse_client_update(msg) == delta


@pytest.mark.parametrize("kind", ["ForceEndpoint", "KeepAlive", "Terminate", None])
def test_non_update_client_messages_are_not_config(kind: str | None) -> None:
    assert STREAMING_V3.parse_client_update({"type": kind}) is None


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        ({"type": "UpdateConfiguration", "keyterms_prompt": "Acme"}, "keyterms_prompt"),
        ({"type": "UpdateConfiguration", "vad_threshold": True}, "vad_threshold"),
        ({"type": "UpdateConfiguration", "prompt": 7}, "prompt"),
    ],
)
def test_parse_client_update_rejects_wrong_types(msg: dict[str, Any], field: str) -> None:
    with pytest.raises(DialectError) as caught:
        STREAMING_V3.parse_client_update(msg)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("msg", "locked", "out", "stripped"),
    [
        pytest.param(
            {"type": "UpdateConfiguration", "prompt": "p", "keyterms_prompt": ["a"], "mode": "x"},
            {"prompt"},
            {"type": "UpdateConfiguration", "keyterms_prompt": ["a"], "mode": "x"},
            ("prompt",),
            id="one-of-several",
        ),
        pytest.param(
            {"type": "UpdateConfiguration", "vad_threshold": 0.5, "max_turn_silence": 900},
            ["max_turn_silence_ms", "vad_threshold", "system_prompt", "prompt"],
            None,
            ("max_turn_silence_ms", "vad_threshold"),
            id="nothing-left",
        ),
        pytest.param(
            {"type": "UpdateConfiguration", "mode": "min_latency", "agent_context": "a"},
            {"agent_context"},
            {"type": "UpdateConfiguration", "mode": "min_latency"},
            ("agent_context",),
            id="non-canonical-keys-stay",
        ),
        pytest.param(
            {"type": "UpdateConfiguration", "min_end_of_turn_silence_when_confident": 300},
            {"min_turn_silence_ms"},
            None,
            ("min_turn_silence_ms",),
            id="alias",
        ),
        pytest.param(
            {"type": "UpdateConfiguration", "keyterms_prompt": ["a"]},
            {"prompt"},
            {"type": "UpdateConfiguration", "keyterms_prompt": ["a"]},
            (),
            id="nothing-locked-present",
        ),
        pytest.param(
            {"type": "KeepAlive"}, {"prompt"}, {"type": "KeepAlive"}, (), id="not-an-update"
        ),
    ],
)
def test_strip_locked(
    msg: dict[str, Any],
    locked: set[str] | list[str],
    out: dict[str, Any] | None,
    stripped: tuple[str, ...],
) -> None:
    before = json.dumps(msg)
    assert STREAMING_V3.strip_locked(msg, locked) == (out, stripped)
    assert json.dumps(msg) == before  # the client's message is not mutated


# --- upstream ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msg", "event"),
    [
        (
            {"type": "Begin", "id": "de5d9927", "expires_at": 1759796682, "configuration": {}},
            Ready("de5d9927"),
        ),
        ({"type": "Turn", "end_of_turn": True, "transcript": "Hi."}, TurnBoundary()),
        ({"type": "Turn", "end_of_turn": False, "transcript": "Hi—"}, Other("Turn")),
        (
            {"type": "Warning", "warning_code": 1234, "warning": "slow audio"},
            Warned("1234", "slow audio"),
        ),
        (
            {"type": "Error", "error_code": 3006, "error": "Invalid JSON"},
            Fatal("3006", "Invalid JSON"),
        ),
        ({"type": "Error", "error": "boom"}, Fatal("unknown", "boom")),
        ({"error": "Model deprecated. See docs"}, Fatal("unknown", "Model deprecated. See docs")),
        ({"type": "Termination", "audio_duration_seconds": 13}, Ended()),
        ({"type": "SpeechStarted", "timestamp": 1216}, Other("SpeechStarted")),
        ({"type": "Heartbeat"}, Other("Heartbeat")),
        ({"transcript": "no type"}, Other("")),
    ],
)
def test_parse_upstream(msg: dict[str, Any], event: UpstreamEvent) -> None:
    assert STREAMING_V3.parse_upstream(msg) == event


# --- limits -----------------------------------------------------------------------------------


def test_check_limits_names_the_keyterms_cap() -> None:
    cap = LIMITS["keyterms_max_items"]
    terms = tuple(f"term {i}" for i in range(int(cap) + 1))
    [violation] = STREAMING_V3.check_limits({"keyterms": terms}, U3)
    assert (violation.field, violation.rule, violation.limit) == ("keyterms", "max_items", 100)
    assert "100" in violation.message
    assert "101" in violation.message


@pytest.mark.parametrize(
    ("config", "model", "expected"),
    [
        ({"prompt": "x" * 1751}, U3, [("prompt", "max_chars", 1750)]),
        ({"agent_context": "x" * 1751}, U3, [("agent_context", "max_chars", 1750)]),
        ({"prompt": "x" * 1751}, US, []),  # not sent to this model: a skip, not a violation
        ({"keyterms": ("ok", "y" * 51)}, US, [("keyterms[1]", "max_item_chars", 50)]),
        ({"min_turn_silence_ms": 20}, U3, [("min_turn_silence_ms", "min", 50)]),
        ({"min_turn_silence_ms": 20_000}, U3, [("min_turn_silence_ms", "max", 10_000)]),
        ({"system_prompt": "x" * 30_000}, U3, []),
        (FULL_CONFIG, U3, []),
    ],
)
def test_check_limits(config: Config, model: str, expected: list[tuple[str, str, int]]) -> None:
    found = STREAMING_V3.check_limits(config, model)
    assert [(v.field, v.rule, v.limit) for v in found] == expected
