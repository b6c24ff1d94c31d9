"""The sans-I/O pieces driven step by step with a fake clock (no sockets)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from emulator.actions import Close, Send
from emulator.audio import Pacer, chunk_duration_ms
from emulator.faults import FaultSpec
from emulator.inspection import Stats
from emulator.settings import EmulatorSettings
from emulator.streaming import StreamingSession
from emulator.streaming_config import apply_update, parse_connect
from sessions.clock import FakeClock
from sessions.dialects.streaming_v3_table import CLOSE, MODE_PRESETS


def _session(query: dict[str, str], clock: FakeClock, **settings: Any) -> StreamingSession:
    s = EmulatorSettings(**settings)
    parsed = parse_connect(query, s)
    assert isinstance(parsed, tuple)
    config, ignored = parsed
    return StreamingSession(
        settings=s,
        clock=clock,
        stats=Stats(),
        config=config,
        ignored=ignored,
        connect={},
        api_version="2025-05-12",
        faults=FaultSpec(),
    )


def test_inactivity_timeout_and_keepalive() -> None:
    clock = FakeClock()
    session = _session({"sample_rate": "16000", "inactivity_timeout": "5"}, clock)
    assert session.next_deadline() == clock.monotonic() + 5
    clock.advance(4)
    session.receive_text(json.dumps({"type": "KeepAlive"}), clock.monotonic())
    clock.advance(4)
    assert session.on_timer(clock.monotonic()) == []
    clock.advance(1.5)
    actions = session.on_timer(clock.monotonic())
    assert isinstance(actions[-1], Close) and actions[-1].code == CLOSE["invalid_message"]
    assert session.closed


def test_session_expiry_closes_3008_and_token_cap_shortens_it() -> None:
    clock = FakeClock()
    session = _session({"sample_rate": "16000"}, clock, max_session_seconds=60)
    clock.advance(61)
    actions = session.on_timer(clock.monotonic())
    assert isinstance(actions[0], Send) and actions[0].payload["error_code"] == CLOSE["expired"]
    assert actions[-1] == Close(
        CLOSE["expired"], "Session Expired: Maximum session duration exceeded"
    )


def test_heartbeat_every_interval_of_wall_time() -> None:
    clock = FakeClock()
    session = _session({"sample_rate": "16000", "session_heartbeat": "True"}, clock)
    clock.advance(5)
    (beat,) = session.on_timer(clock.monotonic())
    assert isinstance(beat, Send) and beat.payload["type"] == "Heartbeat"
    assert session.next_deadline() == clock.monotonic() + 5


def test_mode_update_reapplies_the_preset_then_explicit_fields() -> None:
    s = EmulatorSettings()
    parsed = parse_connect({"sample_rate": "16000", "max_turn_silence": "3000"}, s)
    assert isinstance(parsed, tuple)
    config = parsed[0]
    assert config["max_turn_silence"] == 3000
    result = apply_update(
        config, {"type": "UpdateConfiguration", "mode": "max_accuracy", "min_turn_silence": 700}, s
    )
    assert result.config["max_turn_silence"] == MODE_PRESETS["max_accuracy"]["max_turn_silence"]
    assert result.config["min_turn_silence"] == 700
    cleared = apply_update(result.config, {"keyterms_prompt": [], "prompt": ""}, s)
    assert cleared.config["keyterms_prompt"] == [] and cleared.config["prompt"] == ""


def test_query_booleans_and_lists_in_every_client_spelling() -> None:
    s = EmulatorSettings()
    for raw in ("True", "true", "1"):
        parsed = parse_connect({"sample_rate": "16000", "format_turns": raw}, s)
        assert isinstance(parsed, tuple) and parsed[0]["format_turns"] is True
    parsed = parse_connect(
        {
            "sample_rate": "16000",
            "keyterms_prompt": '["a", "' + "x" * 51 + '"]',
            "redact_pii_policies": "person_name,phone_number",
            "unknownParam": "1",
        },
        s,
    )
    assert isinstance(parsed, tuple)
    config, ignored = parsed
    assert config["keyterms_prompt"] == ["a"]  # > 50 chars silently dropped
    assert config["redact_pii_policies"] == ["person_name", "phone_number"]
    assert ignored == ["unknownParam"]


@given(st.lists(st.sampled_from([50, 100, 200, 250]), min_size=1, max_size=200))
def test_real_time_senders_never_trip_the_pacer(chunk_ms: list[int]) -> None:
    pacer = Pacer(window_s=10.0, tolerance_ms=1500.0)
    now = 0.0
    for ms in chunk_ms:
        now += ms / 1000.0  # a chunk is sent once it has been captured
        assert pacer.add(now, ms) is None


@given(st.integers(min_value=1, max_value=20))
def test_faster_than_real_time_trips_the_pacer(factor: int) -> None:
    pacer = Pacer(window_s=10.0, tolerance_ms=1500.0)
    now, tripped = 0.0, None
    for _ in range(400):
        now += 0.1 / (factor + 1)
        tripped = pacer.add(now, 100) or tripped
    assert tripped is not None


def test_chunk_duration_math() -> None:
    assert chunk_duration_ms(1600, "pcm_s16le", 16_000) == 50
    assert chunk_duration_ms(400, "pcm_mulaw", 8000) == 50
    assert chunk_duration_ms(4800, "audio/pcm", 24_000) == 100
    assert chunk_duration_ms(100, "opus", 48_000) is None


def test_terminate_finalises_the_open_turn_then_termination_then_1000() -> None:
    from emulator.assets import speech

    clock = FakeClock()
    session = _session({"sample_rate": "16000"}, clock, pacing_tolerance_ms=float("inf"))
    session.receive_audio(speech(800), clock.monotonic())
    actions = session.receive_text(json.dumps({"type": "Terminate"}), clock.monotonic())
    sends = [a.payload for a in actions if isinstance(a, Send)]
    assert [p["type"] for p in sends][-2:] == ["Turn", "Termination"]
    assert sends[-2]["end_of_turn"] is True
    assert actions[-1] == Close(CLOSE["normal"], "")


def test_carryover_fifo_and_zero_depth_discards_agent_context() -> None:
    clock = FakeClock()
    session = _session(
        {"sample_rate": "16000", "previous_context_n_turns": "2", "agent_context": "hello"}, clock
    )
    for text in ("one", "two", "three"):
        message = {"type": "UpdateConfiguration", "agent_context": text}
        session.receive_text(json.dumps(message), clock.monotonic())
    assert [e["text"] for e in session.carryover] == ["two", "three"]
    off = _session(
        {"sample_rate": "16000", "previous_context_n_turns": "0", "agent_context": "hello"}, clock
    )
    assert list(off.carryover) == []
