"""The official ``assemblyai`` 1.8.2 streaming client works against the emulator unchanged."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from assemblyai.streaming.v3 import (
    BeginEvent,
    RealTimeError,
    RealTimeEvents,
    RealTimeParameters,
    RealTimeSessionParameters,
    RealTimeTranscriber,
    RealTimeTranscriberOptions,
    SpeechModel,
    TerminationEvent,
    TurnEvent,
)

from emulator.assets import chunks, pattern_audio
from sessions.dialects.streaming_v3_table import MODE_PRESETS
from tests.integration.emulator.conftest import Emulator

TURN = [("speech", 1000), ("silence", 1600)]


def _run_sdk(port: int, new_silence: int) -> dict[str, Any]:
    """Drive the threaded SDK client; returns what its own models parsed."""
    begins: list[BeginEvent] = []
    turns: list[TurnEvent] = []
    terminations: list[TerminationEvent] = []
    errors: list[RealTimeError] = []
    finals = threading.Semaphore(0)

    def on_turn(_client: Any, event: TurnEvent) -> None:
        turns.append(event)
        if event.end_of_turn:
            finals.release()

    client = RealTimeTranscriber(
        RealTimeTranscriberOptions(api_key="sdk-key", api_host=f"ws://127.0.0.1:{port}")
    )
    client.on(RealTimeEvents.Begin, lambda _c, e: begins.append(e))
    client.on(RealTimeEvents.Turn, on_turn)
    client.on(RealTimeEvents.Termination, lambda _c, e: terminations.append(e))
    client.on(RealTimeEvents.Error, lambda _c, e: errors.append(e))
    client.connect(
        RealTimeParameters(
            sample_rate=16_000,
            speech_model=SpeechModel.universal_3_5_pro,
            keyterms_prompt=["Acme"],
        )
    )
    audio = pattern_audio(TURN)
    client.stream(list(chunks(audio, 100)))
    assert finals.acquire(timeout=10), "no final Turn for the first utterance"
    client.set_params(
        RealTimeSessionParameters(max_turn_silence=new_silence, keyterms_prompt=["Zephyr"])
    )
    client.stream(list(chunks(audio, 100)))
    assert finals.acquire(timeout=10), "no final Turn for the second utterance"
    client.disconnect(terminate=True)
    return {"begins": begins, "turns": turns, "terminations": terminations, "errors": errors}


async def test_official_sdk_streams_and_set_params_reaches_the_timeline(
    start_emulator: Any,
) -> None:
    emu: Emulator = await start_emulator(pacing_tolerance_ms=float("inf"))
    result = await asyncio.to_thread(_run_sdk, emu.port, 700)

    assert result["errors"] == []
    (begin,) = result["begins"]
    assert isinstance(begin, BeginEvent)
    assert begin.configuration is not None
    assert begin.configuration.model == "universal-3-5-pro"
    assert begin.configuration.api_version == "2025-05-12"
    finals = [t for t in result["turns"] if t.end_of_turn]
    assert [t.turn_order for t in finals] == [0, 1]
    assert "Acme" in finals[0].transcript and "Zephyr" not in finals[0].transcript
    assert "Zephyr" in finals[1].transcript  # the keyterm change shows in the next turn
    assert all(t.turn_is_formatted and t.transcript.endswith(".") for t in finals)
    assert any(not t.end_of_turn for t in result["turns"])  # partials parsed too
    (termination,) = result["terminations"]
    assert termination.audio_duration_seconds == round(2 * 2.6)

    detail = await emu.session(begin.id)
    assert detail["kind"] == "streaming-v3" and detail["state"] == "closed"
    assert detail["close_code"] == 1000
    updates = [e for e in detail["timeline"] if e["message"]["type"] == "UpdateConfiguration"]
    assert len(updates) == 1
    # exactly the fields the SDK sent (exclude_none), nothing else
    assert updates[0]["message"] == {
        "type": "UpdateConfiguration",
        "max_turn_silence": 700,
        "keyterms_prompt": ["Zephyr"],
    }
    assert updates[0]["config"]["max_turn_silence"] == 700
    assert updates[0]["config"]["keyterms_prompt"] == ["Zephyr"]
    assert updates[0]["sent"] == []  # no acknowledgement, no warning
    assert detail["config"]["sample_rate"] == 16_000
    assert detail["config"]["speech_model"] == "universal-3-5-pro"
    # turn 0 ended at the balanced preset's max_turn_silence, turn 1 at the updated 700
    first, second = detail["turns"]
    balanced = MODE_PRESETS["balanced"]["max_turn_silence"]
    assert first["end_ms"] - first["last_speech_ms"] == balanced
    assert second["end_ms"] - second["last_speech_ms"] == 700
    assert [e["message"]["type"] for e in detail["timeline"]][-1] == "Terminate"
