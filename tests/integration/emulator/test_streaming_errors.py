"""Streaming v3 error paths over real sockets: each documented close code / event."""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from emulator.assets import chunks, silence, speech
from sessions.dialects.streaming_v3_table import CLOSE, LIMITS
from tests.integration.emulator.conftest import Emulator, StartEmulator
from tests.integration.emulator.streaming_client import drain, open_stream


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "Unauthorized Connection: Missing Authorization header"),
        ({"Authorization": "Bearer test-key"}, "Unauthorized Connection: Invalid API key"),
        ({"Authorization": "wrong"}, "Unauthorized Connection: Invalid API key"),
    ],
)
async def test_bad_auth_closes_1008(
    start_emulator: StartEmulator, headers: dict[str, str], reason: str
) -> None:
    emu = await start_emulator(api_keys=frozenset({"test-key"}))
    async with open_stream(emu.ws, headers=headers) as ws:
        messages, code, text = await drain(ws)
    assert messages == []
    assert (code, text) == (CLOSE["unauthorized"], reason)
    stats = await emu.get("/_emulator/stats")
    assert stats["kinds"]["streaming-v3"]["connections_rejected"] == 1
    assert stats["kinds"]["streaming-v3"]["sessions_opened"] == 0


async def test_bad_auth_can_be_an_http_401(start_emulator: StartEmulator) -> None:
    emu = await start_emulator(auth_rejection="http")
    with pytest.raises(InvalidStatus) as info:
        async with open_stream(emu.ws, headers={}):
            pass
    assert info.value.response.status_code == 401


async def test_raw_key_and_single_use_token_are_accepted(emulator: Emulator) -> None:
    async with open_stream(emulator.ws) as ws:
        assert json.loads(await ws.recv())["type"] == "Begin"
    status, _ = await emulator.request("GET", "/v3/token?expires_in_seconds=60")
    assert status == 401  # the token endpoint wants the key too
    async with (
        aiohttp.ClientSession(headers={"Authorization": "test-key"}) as client,
        client.get(emulator.http + "/v3/token?expires_in_seconds=60") as resp,
    ):
        token = (await resp.json())["token"]
    async with open_stream(emulator.ws, f"sample_rate=16000&token={token}", headers={}) as ws:
        assert json.loads(await ws.recv())["type"] == "Begin"
    async with open_stream(emulator.ws, f"sample_rate=16000&token={token}", headers={}) as ws:
        _, code, _ = await drain(ws)  # single use
    assert code == CLOSE["unauthorized"]
    async with (
        aiohttp.ClientSession(headers={"Authorization": "test-key"}) as client,
        client.get(emulator.http + "/v3/token?expires_in_seconds=60") as resp,
    ):
        token = (await resp.json())["token"]
    async with open_stream(emulator.ws, headers={"Authorization": token}) as ws:  # Python SDK
        begin = json.loads(await ws.recv())
    assert (await emulator.session(begin["id"]))["connect"]["auth"] == "token"


async def test_agent_context_on_non_u3_model_at_connect_is_rejected(emulator: Emulator) -> None:
    query = "sample_rate=16000&speech_model=universal-streaming-english&agent_context=Hi%20there"
    async with open_stream(emulator.ws, query) as ws:
        messages, code, reason = await drain(ws)
    assert code == CLOSE["invalid_message"]
    assert messages == [
        {
            "type": "Error",
            "error_code": CLOSE["invalid_message"],
            "error": "agent_context is not supported by model universal-streaming-english",
        }
    ]
    assert reason == messages[0]["error"]
    assert (await emulator.get("/_emulator/sessions"))["items"] == []  # never began


async def test_oversize_agent_context_mid_stream_cancels_the_session(
    emulator: Emulator,
) -> None:
    cap = int(LIMITS["agent_context_max_chars"])
    query = "sample_rate=16000&speech_model=universal-3-5-pro"
    async with open_stream(emulator.ws, query) as ws:
        begin = json.loads(await ws.recv())
        ok = {"type": "UpdateConfiguration", "agent_context": "a" * cap}
        await ws.send(json.dumps(ok))
        too_long = {"type": "UpdateConfiguration", "agent_context": "b" * (cap + 1)}
        await ws.send(json.dumps(too_long))
        messages, code, reason = await drain(ws)
    assert code == CLOSE["invalid_message"]
    assert [m["type"] for m in messages] == ["Error"]  # the accepted update got no ack
    assert reason == f"agent_context is {cap + 1} characters; the maximum is {cap}"
    detail = await emulator.session(begin["id"])
    first, second = detail["timeline"]
    assert first["config"]["agent_context"] == "a" * cap and first["sent"] == []
    assert second["config"]["agent_context"] == "a" * cap  # refused update not applied
    assert second["sent"][0]["type"] == "Error"
    assert detail["carryover"] == [{"source": "agent_context", "text": "a" * cap}]


async def test_the_cap_is_a_setting(start_emulator: StartEmulator) -> None:
    emu = await start_emulator(agent_context_max_chars=1500)
    async with open_stream(emu.ws, "sample_rate=16000&agent_context=" + "x" * 1501) as ws:
        messages, code, _ = await drain(ws)
    assert code == CLOSE["invalid_message"]
    assert "maximum is 1500" in messages[0]["error"]


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("{not json", "Invalid JSON: {not json"),
        ('{"type": "Reconfigure"}', "Invalid Message Type: Reconfigure"),
        ("[]", "Invalid Message: []"),
    ],
)
async def test_protocol_errors_close_3006(emulator: Emulator, frame: str, reason: str) -> None:
    async with open_stream(emulator.ws) as ws:
        await ws.recv()
        await ws.send(frame)
        messages, code, text = await drain(ws)
    assert (code, text) == (CLOSE["invalid_message"], reason)
    assert messages == [{"type": "Error", "error_code": code, "error": reason}]


@pytest.mark.parametrize(("ms", "shown"), [(1100, "1100"), (40, "40")])
async def test_chunk_duration_outside_50_to_1000_ms_closes_3007(
    emulator: Emulator, ms: int, shown: str
) -> None:
    async with open_stream(emulator.ws) as ws:
        await ws.recv()
        await ws.send(silence(ms))
        _, code, reason = await drain(ws)
    assert code == CLOSE["audio_violation"]
    assert reason == f"Input duration violation: {shown} ms. Expected between 50 and 1000 ms"


async def test_mulaw_chunk_math_uses_one_byte_per_sample(emulator: Emulator) -> None:
    query = "sample_rate=8000&encoding=pcm_mulaw"
    async with open_stream(emulator.ws, query) as ws:
        await ws.recv()
        await ws.send(b"\xff" * 400)  # 50 ms at 8 kHz mu-law: accepted
        await ws.send(b"\xff" * 8800)  # 1100 ms
        _, code, reason = await drain(ws)
    assert code == CLOSE["audio_violation"]
    assert reason and reason.startswith("Input duration violation: 1100 ms")


async def test_audio_faster_than_real_time_closes_3007(emulator: Emulator) -> None:
    async with open_stream(emulator.ws) as ws:
        await ws.recv()
        # as fast as possible until the server closes: 3 s of audio trip the 1.5 s tolerance
        # when sending takes under 1.5 s; on a loaded machine (a stall widens the window's
        # wall time) it takes more. Bounded: 30 s of audio
        with contextlib.suppress(ConnectionClosed):
            for chunk in chunks(silence(30_000), 100):
                await ws.send(chunk)
        _, code, reason = await drain(ws)
    assert code == CLOSE["audio_violation"]
    assert reason and reason.startswith("Audio Transmission Rate Exceeded: Received ")


async def test_real_time_sender_is_not_flagged(emulator: Emulator) -> None:
    loop = asyncio.get_running_loop()
    async with open_stream(emulator.ws) as ws:
        await ws.recv()
        start = loop.time()
        for i, chunk in enumerate(chunks(speech(1500), 50)):
            await ws.send(chunk)
            await asyncio.sleep(max(0.0, start + (i + 1) * 0.05 - loop.time()))
        await ws.send(json.dumps({"type": "Terminate"}))
        messages, code, _ = await drain(ws)
    assert code == CLOSE["normal"]
    assert messages[-1]["type"] == "Termination"


async def test_message_over_128_kib_closes_1009(emulator: Emulator) -> None:
    async with open_stream(emulator.ws) as ws:
        await ws.recv()
        await ws.send(b"\x00" * (int(LIMITS["max_message_bytes"]) + 1))
        _, code, _ = await drain(ws)
    assert code == CLOSE["too_big"]


async def test_u3_only_field_mid_stream_on_other_model_is_stripped_with_warning(
    emulator: Emulator,
) -> None:
    query = "sample_rate=16000&speech_model=universal-streaming-english"
    async with open_stream(emulator.ws, query) as ws:
        begin = json.loads(await ws.recv())
        update = {"type": "UpdateConfiguration", "agent_context": "Hi", "max_turn_silence": 900}
        await ws.send(json.dumps(update))
        warning = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "Terminate"}))
        messages, code, _ = await drain(ws)
    assert warning["type"] == "Warning" and isinstance(warning["warning_code"], int)
    assert "agent_context" in warning["warning"]
    assert [m["type"] for m in messages] == ["Termination"] and code == CLOSE["normal"]
    detail = await emulator.session(begin["id"])
    entry = detail["timeline"][0]
    assert entry["config"]["max_turn_silence"] == 900  # the rest applied
    assert "agent_context" not in entry["config"]
    assert entry["stripped"] == ["agent_context"] and entry["sent"] == [warning]


async def test_missing_sample_rate_and_unknown_model_are_refused(emulator: Emulator) -> None:
    async with open_stream(emulator.ws, "speech_model=universal-3-5-pro") as ws:
        messages, code, _ = await drain(ws)
    assert code == CLOSE["invalid_message"] and "sample_rate" in messages[0]["error"]
    async with open_stream(emulator.ws, "sample_rate=16000&speech_model=nano") as ws:
        messages, code, _ = await drain(ws)
    assert messages[0]["error"] == "Invalid speech_model: nano"
