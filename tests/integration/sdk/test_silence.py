"""``Silence`` (U3-Pro, ``acknowledge_silence=true``) from the emulator, through the gateway,
parsed by the official Python SDK."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from assemblyai.streaming.v3 import (
    AsyncRealTimeTranscriber,
    RealTimeEvents,
    RealTimeParameters,
    RealTimeTranscriberOptions,
    SilenceEvent,
    TerminationEvent,
)

from emulator.assets import chunks, pattern_audio
from tests.integration.service.conftest import ControlPlaneUnderTest, eventually

AUDIO = pattern_audio([("silence", 2100), ("speech", 600), ("silence", 2000)])


async def _silences(cp: ControlPlaneUnderTest, model: str, **params: Any) -> list[SilenceEvent]:
    client = AsyncRealTimeTranscriber(
        RealTimeTranscriberOptions(api_key="test-key", api_host=cp.ws_base)
    )
    silences: list[SilenceEvent] = []
    ended: list[TerminationEvent] = []
    client.on(RealTimeEvents.Silence, lambda _c, event: silences.append(event))
    client.on(RealTimeEvents.Termination, lambda _c, event: ended.append(event))
    await client.connect(RealTimeParameters(sample_rate=16000, speech_model=model, **params))
    for chunk in chunks(AUDIO, 100):
        await client.stream(chunk)
    await client.disconnect(terminate=True)  # Termination comes after all audio is handled
    await eventually(lambda: ended)
    return silences


async def test_silence_once_per_audio_second_while_no_turn_is_open(
    cp: ControlPlaneUnderTest,
) -> None:
    silences = await _silences(cp, "universal-3-5-pro", acknowledge_silence=True)
    ranges = [(s.start_ms, s.end_ms) for s in silences]
    assert ranges[:2] == [(0, 1000), (1000, 2000)]
    for (start, end), (next_start, _) in pairwise(ranges):
        assert end - start == 1000 and next_start >= end
    assert all(start >= 2700 for start, _ in ranges[2:])  # none while the turn is open


async def test_no_silence_without_the_opt_in_or_off_u3_pro(cp: ControlPlaneUnderTest) -> None:
    assert await _silences(cp, "universal-3-5-pro") == []
    english = "universal-streaming-english"
    assert await _silences(cp, english, acknowledge_silence=True) == []
