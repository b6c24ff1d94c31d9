"""Voice Agent codec: golden frames, skips, unset defaults, first update, stripping, events."""

from __future__ import annotations

import json
from typing import Any

import pytest

from policies.fields import FIELDS, Config, Delta
from sessions.dialects.base import (
    Acked,
    Ended,
    Fatal,
    Other,
    Ready,
    Rejected,
    TurnBoundary,
    UpstreamEvent,
)
from sessions.dialects.voice_agent_v1 import VOICE_AGENT_V1
from sessions.dialects.voice_agent_v1_table import DEFAULT_CONFIG, MODEL
from sessions.errors import DialectError

AGENT_CONTEXT_SKIP = "agent_context: voice-agent-v1 has no agent_context (streaming U3-Pro only)"


# --- encode -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delta", "wire"),
    [
        pytest.param(
            {
                "vad_threshold": 0.6,
                "system_prompt": "You are a helpful agent for Acme Corp.",
                "max_turn_silence_ms": 2500,
                "keyterms": ("Acme", "OrderPro"),
                "min_turn_silence_ms": 800,
                "prompt": "Order ids look like AC-1234.",
            },
            '{"type": "session.update", "session": {"input": {"transcription_prompt": '
            '"Order ids look like AC-1234.", "keyterms": ["Acme", "OrderPro"], '
            '"turn_detection": {"min_silence": 800, "max_silence": 2500, "vad_threshold": 0.6}}, '
            '"system_prompt": "You are a helpful agent for Acme Corp."}}',
            id="every-field",
        ),
        pytest.param(
            {"system_prompt": "Be brief."},
            '{"type": "session.update", "session": {"system_prompt": "Be brief."}}',
            id="system-prompt-only",
        ),
        pytest.param(
            {"max_turn_silence_ms": 3000, "agent_context": "ignored"},
            '{"type": "session.update", "session": {"input": {"turn_detection": '
            '{"max_silence": 3000}}}}',
            id="turn-detection-only",
        ),
        pytest.param(
            dict.fromkeys(name for name in FIELDS if name != "agent_context"),
            '{"type": "session.update", "session": {"input": {"transcription_prompt": "", '
            '"keyterms": [], "turn_detection": {"min_silence": 1000, "max_silence": 3000, '
            '"vad_threshold": 0.5}}, "system_prompt": ""}}',
            id="unset-everything",
        ),
    ],
)
def test_encode_golden(delta: Delta, wire: str) -> None:
    encoded = VOICE_AGENT_V1.encode(delta, MODEL)
    assert json.dumps(encoded.message) == wire


def test_unset_takes_default_config_values() -> None:
    encoded = VOICE_AGENT_V1.encode(
        {"min_turn_silence_ms": None, "vad_threshold": None, "keyterms": None}, MODEL
    )
    assert encoded.message is not None
    input_defaults: Any = DEFAULT_CONFIG["input"]
    turn = input_defaults["turn_detection"]
    got = encoded.message["session"]["input"]
    assert got["turn_detection"] == {
        "min_silence": turn["min_silence"],
        "vad_threshold": turn["vad_threshold"],
    }
    assert got["keyterms"] == input_defaults["keyterms"]
    assert got["keyterms"] is not input_defaults["keyterms"]  # never hand out the table's list


def test_agent_context_skipped() -> None:
    encoded = VOICE_AGENT_V1.encode({"agent_context": "What date?"}, MODEL)
    assert encoded.message is None
    assert dict(encoded.skipped) == {"agent_context": AGENT_CONTEXT_SKIP}
    both = VOICE_AGENT_V1.encode({"agent_context": None, "keyterms": ("Acme",)}, MODEL)
    assert both.message == {"type": "session.update", "session": {"input": {"keyterms": ["Acme"]}}}
    assert both.sent_fields == ("keyterms",)
    assert dict(both.skipped) == {"agent_context": AGENT_CONTEXT_SKIP}


# --- first update -----------------------------------------------------------------------------

FIRST_UPDATE: dict[str, Any] = {
    "type": "session.update",
    "session": {
        "system_prompt": "You are Acme support.",
        "greeting": "Hello!",
        "input": {
            "format": {"encoding": "audio/pcm"},
            "keyterms": ["Acme"],
            "turn_detection": {"vad_threshold": 0.5, "interrupt_response": True},
        },
        "output": {"voice": "ivy"},
    },
}


def test_parse_first_update() -> None:
    info = VOICE_AGENT_V1.parse_first_update(FIRST_UPDATE)
    assert info.model == MODEL
    assert info.client_config == {
        "system_prompt": "You are Acme support.",
        "keyterms": ("Acme",),
        "vad_threshold": 0.5,
    }
    assert dict(info.labels) == {}


def test_parse_first_update_agent_id_and_clears() -> None:
    agent = {"type": "session.update", "session": {"agent_id": "agt_1"}}
    assert VOICE_AGENT_V1.parse_first_update(agent).client_config == {}
    cleared = {
        "type": "session.update",
        "session": {"system_prompt": "", "input": {"keyterms": []}},
    }
    assert VOICE_AGENT_V1.parse_first_update(cleared).client_config == {}


@pytest.mark.parametrize(
    "msg", [{"type": "session.resume", "session_id": "sess_1"}, {"type": "input.audio"}]
)
def test_parse_first_update_requires_session_update(msg: dict[str, Any]) -> None:
    with pytest.raises(DialectError) as caught:
        VOICE_AGENT_V1.parse_first_update(msg)
    assert caught.value.field == "type"


def test_merge_first_update_writes_config_and_keeps_the_rest() -> None:
    config: Config = {
        "prompt": "Acme ids",
        "keyterms": ("Acme", "OrderPro"),
        "min_turn_silence_ms": 700,
        "agent_context": "not here",
    }
    merged, skipped = VOICE_AGENT_V1.merge_first_update(FIRST_UPDATE, config)
    assert json.dumps(merged) == (
        '{"type": "session.update", "session": {"system_prompt": "You are Acme support.", '
        '"greeting": "Hello!", "input": {"format": {"encoding": "audio/pcm"}, '
        '"keyterms": ["Acme", "OrderPro"], "turn_detection": {"vad_threshold": 0.5, '
        '"interrupt_response": true, "min_silence": 700}, "transcription_prompt": "Acme ids"}, '
        '"output": {"voice": "ivy"}}}'
    )
    assert dict(skipped) == {"agent_context": AGENT_CONTEXT_SKIP}
    assert FIRST_UPDATE["session"]["input"]["keyterms"] == ["Acme"]  # input not mutated
    assert VOICE_AGENT_V1.parse_first_update(merged).client_config == {
        "prompt": "Acme ids",
        "system_prompt": "You are Acme support.",
        "keyterms": ("Acme", "OrderPro"),
        "min_turn_silence_ms": 700,
        "vad_threshold": 0.5,
    }


def test_merge_first_update_adds_nothing_to_an_agent_id_message() -> None:
    msg = {"type": "session.update", "session": {"agent_id": "agt_42"}}
    merged, skipped = VOICE_AGENT_V1.merge_first_update(
        msg, {"system_prompt": "x", "keyterms": ("Acme",), "agent_context": "y"}
    )
    assert merged == msg
    reason = "first session.update names stored agent 'agt_42'; agent_id must be its only field"
    assert dict(skipped) == {
        "system_prompt": f"system_prompt: {reason}",
        "agent_context": AGENT_CONTEXT_SKIP,
        "keyterms": f"keyterms: {reason}",
    }


def test_merge_first_update_without_session_object() -> None:
    merged, skipped = VOICE_AGENT_V1.merge_first_update(
        {"type": "session.update"}, {"vad_threshold": 0.4}
    )
    assert merged == {
        "type": "session.update",
        "session": {"input": {"turn_detection": {"vad_threshold": 0.4}}},
    }
    assert dict(skipped) == {}
    with pytest.raises(DialectError):
        VOICE_AGENT_V1.merge_first_update({"type": "session.resume"}, {})


# --- client updates ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msg", "delta"),
    [
        (
            {
                "type": "session.update",
                "session": {
                    "system_prompt": "New rules.",
                    "tools": [],
                    "input": {"turn_detection": {"max_silence": 2000, "vad_threshold": 1}},
                },
            },
            {"system_prompt": "New rules.", "max_turn_silence_ms": 2000, "vad_threshold": 1.0},
        ),
        (
            {
                "type": "session.update",
                "session": {"input": {"transcription_prompt": "", "keyterms": []}},
            },
            {"prompt": None, "keyterms": None},
        ),
        ({"type": "session.update", "session": {"output": {"volume": 50}}}, {}),
        ({"type": "session.update"}, {}),
    ],
)
def test_parse_client_update(msg: dict[str, Any], delta: Delta) -> None:
    assert VOICE_AGENT_V1.parse_client_update(msg) == delta


@pytest.mark.parametrize(
    "kind", ["input.audio", "session.resume", "tool.result", "reply.create", "session.end"]
)
def test_non_update_client_messages_are_not_config(kind: str) -> None:
    assert VOICE_AGENT_V1.parse_client_update({"type": kind, "session": {}}) is None


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        ({"type": "session.update", "session": "x"}, "session"),
        (
            {"type": "session.update", "session": {"input": {"keyterms": "Acme"}}},
            "session.input.keyterms",
        ),
        (
            {
                "type": "session.update",
                "session": {"input": {"turn_detection": {"min_silence": "1s"}}},
            },
            "session.input.turn_detection.min_silence",
        ),
    ],
)
def test_parse_client_update_rejects_wrong_types(msg: dict[str, Any], field: str) -> None:
    with pytest.raises(DialectError) as caught:
        VOICE_AGENT_V1.parse_client_update(msg)
    assert caught.value.field == field


def _update(session: dict[str, Any]) -> dict[str, Any]:
    return {"type": "session.update", "session": session}


@pytest.mark.parametrize(
    ("msg", "locked", "out", "stripped"),
    [
        pytest.param(
            _update(
                {
                    "system_prompt": "s",
                    "input": {"keyterms": ["a"], "turn_detection": {"min_silence": 900}},
                }
            ),
            {"min_turn_silence_ms"},
            _update({"system_prompt": "s", "input": {"keyterms": ["a"]}}),
            ("min_turn_silence_ms",),
            id="prunes-emptied-turn-detection",
        ),
        pytest.param(
            _update(
                {
                    "input": {
                        "keyterms": ["a"],
                        "turn_detection": {"min_silence": 900, "interrupt_response": False},
                    }
                }
            ),
            ["keyterms", "min_turn_silence_ms", "agent_context"],
            _update({"input": {"turn_detection": {"interrupt_response": False}}}),
            ("keyterms", "min_turn_silence_ms"),
            id="keeps-non-canonical-siblings",
        ),
        pytest.param(
            _update({"system_prompt": "s", "input": {"transcription_prompt": "t"}}),
            {"prompt", "system_prompt", "vad_threshold"},
            None,
            ("prompt", "system_prompt"),
            id="nothing-left",
        ),
        pytest.param(
            _update({"input": {"keyterms": ["a"], "turn_detection": {}}}),
            {"keyterms"},
            _update({"input": {"turn_detection": {}}}),
            ("keyterms",),
            id="pre-existing-empty-object-stays",
        ),
        pytest.param(
            _update({"input": {"keyterms": ["a"]}}),
            {"prompt"},
            _update({"input": {"keyterms": ["a"]}}),
            (),
            id="nothing-locked-present",
        ),
        pytest.param(
            {"type": "input.audio", "audio": "AAAA"},
            {"prompt"},
            {"type": "input.audio", "audio": "AAAA"},
            (),
            id="not-an-update",
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
    assert VOICE_AGENT_V1.strip_locked(msg, locked) == (out, stripped)
    assert json.dumps(msg) == before


# --- upstream ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msg", "event"),
    [
        (
            {"type": "session.ready", "session_id": "sess_e70e", "expires_at": 1, "config": {}},
            Ready("sess_e70e"),
        ),
        (
            {"type": "session.updated", "config": {"system_prompt": "x"}, "timestamp": 1.5},
            Acked({"system_prompt": "x"}),
        ),
        ({"type": "session.updated"}, Acked({})),
        (
            {
                "type": "session.error",
                "code": "immutable_field",
                "message": "greeting cannot be changed after session.ready",
                "param": "greeting",
            },
            Rejected(
                "immutable_field", "greeting cannot be changed after session.ready", "greeting"
            ),
        ),
        (
            {"type": "session.error", "code": "INVALID_CONFIG", "message": "bad"},
            Rejected("invalid_config", "bad", None),
        ),
        (
            {"type": "session.error", "code": "session_expired", "message": "TTL"},
            Fatal("session_expired", "TTL"),
        ),
        (
            {"type": "session.error", "code": "UNAUTHORIZED", "message": "Authentication failed"},
            Fatal("unauthorized", "Authentication failed"),
        ),
        ({"type": "error"}, Fatal("unknown", "")),
        ({"type": "reply.done", "reply_id": "r1", "status": "interrupted"}, TurnBoundary()),
        ({"type": "reply.done", "reply_id": "r1"}, TurnBoundary()),
        ({"type": "session.ended", "session_duration_seconds": 183.4}, Ended()),
        ({"type": "reply.audio", "data": "AAAA"}, Other("reply.audio")),
        ({"type": 7}, Other("")),
    ],
)
def test_parse_upstream(msg: dict[str, Any], event: UpstreamEvent) -> None:
    assert VOICE_AGENT_V1.parse_upstream(msg) == event


# --- limits -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"keyterms": tuple(f"t{i}" for i in range(101))}, [("keyterms", "max_items", 100)]),
        ({"prompt": "x" * 1751}, [("prompt", "max_chars", 1750)]),
        ({"agent_context": "x" * 5000, "system_prompt": "x" * 5000}, []),
        ({"keyterms": ("a",) * 100, "prompt": "x" * 1750}, []),
    ],
)
def test_check_limits(config: Config, expected: list[tuple[str, str, int]]) -> None:
    found = VOICE_AGENT_V1.check_limits(config, MODEL)
    assert [(v.field, v.rule, v.limit) for v in found] == expected
    for violation in found:
        assert str(violation.limit) in violation.message
