"""Turn detection follows the session's *current* config; transcripts are deterministic."""

from __future__ import annotations

import json
from typing import Any

from emulator.assets import chunks, pattern_audio
from sessions.dialects.streaming_v3_table import CLOSE, MODE_PRESETS
from tests.integration.emulator.conftest import Emulator, StartEmulator
from tests.integration.emulator.streaming_client import drain, open_stream

U3 = "sample_rate=16000&speech_model=universal-3-5-pro"
UTTERANCE = pattern_audio([("speech", 1200), ("silence", 3000)])


async def _two_turns(emu: Emulator, update: dict[str, Any] | None) -> dict[str, Any]:
    """Same utterance twice; ``update`` (if any) is sent between the two."""
    async with open_stream(emu.ws, U3) as ws:
        begin = json.loads(await ws.recv())
        for chunk in chunks(UTTERANCE, 100):
            await ws.send(chunk)
        if update is not None:
            await ws.send(json.dumps({"type": "UpdateConfiguration", **update}))
        for chunk in chunks(UTTERANCE, 100):
            await ws.send(chunk)
        await ws.send(json.dumps({"type": "Terminate"}))
        messages, code, _ = await drain(ws)
    assert code == CLOSE["normal"]
    detail = await emu.session(begin["id"])
    detail["wire"] = messages
    return detail


def _silence_before_end(turn: dict[str, Any]) -> int:
    return int(turn["end_ms"] - turn["last_speech_ms"])


async def test_max_turn_silence_change_moves_the_next_turn_end(fast_emulator: Emulator) -> None:
    baseline = await _two_turns(fast_emulator, None)
    changed = await _two_turns(fast_emulator, {"max_turn_silence": 2400})
    preset = int(MODE_PRESETS["balanced"]["max_turn_silence"])
    assert [_silence_before_end(t) for t in baseline["turns"]] == [preset, preset]
    assert [_silence_before_end(t) for t in changed["turns"]] == [preset, 2400]
    # same audio, same words: only the end time moved (audio ms from stream start)
    assert baseline["turns"][1]["last_speech_ms"] == changed["turns"][1]["last_speech_ms"]
    assert changed["turns"][1]["end_ms"] - baseline["turns"][1]["end_ms"] == 2400 - preset
    assert baseline["turns"][1]["transcript"] == changed["turns"][1]["transcript"]
    (entry,) = changed["timeline"][:1]
    assert entry["message"] == {"type": "UpdateConfiguration", "max_turn_silence": 2400}
    assert entry["applies_from"] == {"audio_ms": 4200.0, "turn_order": 1, "open_turn": None}
    finals = [m for m in changed["wire"] if m["type"] == "Turn" and m["end_of_turn"]]
    assert [m["turn_order"] for m in finals] == [0, 1]


async def test_min_turn_silence_ends_complete_turns_early(start_emulator: StartEmulator) -> None:
    emu = await start_emulator(pacing_tolerance_ms=float("inf"), turn_complete_ratio=1.0)
    detail = await _two_turns(emu, {"min_turn_silence": 600})
    assert [t["reason"] for t in detail["turns"]] == ["min_silence", "min_silence"]
    preset = int(MODE_PRESETS["balanced"]["min_turn_silence"])
    first, second = (_silence_before_end(t) for t in detail["turns"])
    assert preset <= first < preset + 10  # VAD frames are 10 ms
    assert second == 600


async def test_keyterms_change_shows_in_the_next_turn(fast_emulator: Emulator) -> None:
    detail = await _two_turns(fast_emulator, {"keyterms_prompt": ["Kubernetes", "Helm"]})
    first, second = (t["transcript"] for t in detail["turns"])
    assert "Kubernetes" not in first
    assert "Kubernetes" in second and "Helm" in second
    again = await _two_turns(fast_emulator, {"keyterms_prompt": ["Kubernetes", "Helm"]})
    assert [t["transcript"] for t in again["turns"]] == [first, second]  # deterministic


async def test_vad_threshold_decides_what_counts_as_speech(fast_emulator: Emulator) -> None:
    quiet = pattern_audio([("speech", 1200), ("silence", 2000)], level_dbfs=-40.0)  # p = 0.5
    async with open_stream(fast_emulator.ws, U3) as ws:
        begin = json.loads(await ws.recv())
        for chunk in chunks(quiet, 100):
            await ws.send(chunk)
        await ws.send(json.dumps({"type": "UpdateConfiguration", "vad_threshold": 0.6}))
        for chunk in chunks(quiet, 100):
            await ws.send(chunk)
        await ws.send(json.dumps({"type": "Terminate"}))
        await drain(ws)
    detail = await fast_emulator.session(begin["id"])
    assert len(detail["turns"]) == 1  # the second, quieter-than-threshold utterance is silence


async def test_force_endpoint_finalises_the_open_turn(fast_emulator: Emulator) -> None:
    async with open_stream(fast_emulator.ws, U3) as ws:
        await ws.recv()
        for chunk in chunks(pattern_audio([("speech", 900)]), 100):
            await ws.send(chunk)
        await ws.send(json.dumps({"type": "ForceEndpoint"}))
        await ws.send(json.dumps({"type": "KeepAlive"}))
        await ws.send(json.dumps({"type": "Terminate"}))
        messages, _, _ = await drain(ws)
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "SpeechStarted"
    finals = [m for m in messages if m["type"] == "Turn" and m["end_of_turn"]]
    assert len(finals) == 1 and finals[0]["end_of_turn_confidence"] == 1
    assert finals[0]["utterance"] == finals[0]["transcript"]
    assert all(w["word_is_final"] for w in finals[0]["words"])
    partials = [m for m in messages if m["type"] == "Turn" and not m["end_of_turn"]]
    assert partials and all(p["transcript"].endswith("—") for p in partials)
    assert kinds[-1] == "Termination"


async def test_universal_streaming_word_partials_and_formatted_turn(
    fast_emulator: Emulator,
) -> None:
    query = "sample_rate=16000&speech_model=universal-streaming-english&format_turns=True"
    async with open_stream(fast_emulator.ws, query) as ws:
        await ws.recv()
        for chunk in chunks(pattern_audio([("speech", 1300), ("silence", 1500)]), 100):
            await ws.send(chunk)
        await ws.send(json.dumps({"type": "Terminate"}))
        messages, _, _ = await drain(ws)
    turns = [m for m in messages if m["type"] == "Turn"]
    assert "SpeechStarted" not in [m["type"] for m in messages]
    assert [len(t["words"]) for t in turns if not t["end_of_turn"]] == [1, 2, 3]
    unformatted, formatted = (t for t in turns if t["end_of_turn"])
    assert not unformatted["turn_is_formatted"] and formatted["turn_is_formatted"]
    assert formatted["transcript"].endswith(".") and not unformatted["transcript"].endswith(".")


async def test_heartbeat_when_enabled(start_emulator: StartEmulator) -> None:
    emu = await start_emulator(heartbeat_interval_s=0.2)
    async with open_stream(emu.ws, "sample_rate=16000&session_heartbeat=true") as ws:
        await ws.recv()
        beat = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "UpdateConfiguration", "session_heartbeat": False}))
        await ws.send(json.dumps({"type": "Terminate"}))
        messages, _, _ = await drain(ws)
    assert beat["type"] == "Heartbeat"
    assert set(beat) == {
        "type",
        "total_audio_received_ms",
        "total_duration_ms",
        "realtime_factor",
        "max_speech_probability",
    }
    assert messages[-1]["type"] == "Termination"
