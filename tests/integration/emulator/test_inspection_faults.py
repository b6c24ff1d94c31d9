"""Inspection API and fault knobs (global defaults and per session)."""

from __future__ import annotations

import json
import time

from websockets.exceptions import ConnectionClosed

from emulator.assets import chunks, pattern_audio
from sessions.dialects.streaming_v3_table import CLOSE as SV3_CLOSE
from sessions.dialects.voice_agent_v1_table import CLOSE as VA_CLOSE
from tests.integration.emulator.agent_client import expect, open_agent, send
from tests.integration.emulator.conftest import Emulator, StartEmulator
from tests.integration.emulator.streaming_client import drain, open_stream
from tests.integration.service.conftest import eventually

FIRST = {"type": "session.update", "session": {"system_prompt": "hi"}}


async def test_sessions_list_and_detail_shapes(fast_emulator: Emulator) -> None:
    async with open_stream(
        fast_emulator.ws, "sample_rate=16000&keyterms_prompt=%5B%22a%22%5D"
    ) as ws:
        begin = json.loads(await ws.recv())
        listed = await fast_emulator.get("/_emulator/sessions")
        (item,) = listed["items"]
        assert listed["next"] is None
        assert item["id"] == begin["id"] and item["kind"] == "streaming-v3"
        assert item["model"] == begin["configuration"]["model"] and item["open"] is True
        for chunk in chunks(pattern_audio([("speech", 500), ("silence", 2000)]), 100):
            await ws.send(chunk)
        await ws.send(json.dumps({"type": "UpdateConfiguration", "vad_threshold": 0.3}))
        await ws.send(json.dumps({"type": "Terminate"}))
        await drain(ws)
    detail = await fast_emulator.session(begin["id"])
    assert detail["open"] is False and detail["state"] == "closed"
    assert detail["config"]["keyterms_prompt"] == ["a"]  # connect parameters included
    assert detail["connect"]["query"]["sample_rate"] == "16000"
    (update, terminate) = detail["timeline"]
    assert set(update) >= {"at", "monotonic", "message", "config", "sent", "audio_ms"}
    assert update["message"] == {"type": "UpdateConfiguration", "vad_threshold": 0.3}
    assert update["config"]["vad_threshold"] == 0.3
    assert update["applied"] == {"vad_threshold": 0.3}
    assert update["audio_ms"] == 2500.0
    assert terminate["sent"] == [{"close": {"code": SV3_CLOSE["normal"], "reason": ""}}]
    assert detail["counters"]["audio_bytes"] == 2500 * 32
    assert detail["turns"][0]["transcript"]
    assert await fast_emulator.get("/_emulator/sessions?state=open") == {"items": [], "next": None}
    stats = await fast_emulator.get("/_emulator/stats")
    assert stats["kinds"]["streaming-v3"]["sessions_opened"] == 1
    assert stats["kinds"]["streaming-v3"]["sessions_current"] == 0
    assert stats["total"]["updates"] == 1 and stats["total"]["audio_bytes"] == 80_000
    status, body = await fast_emulator.request("GET", "/_emulator/sessions/nope")
    assert status == 404 and body["error"]["code"] == "session_not_found"


async def test_timeline_memory_is_bounded(start_emulator: StartEmulator) -> None:
    emu = await start_emulator(timeline_max_entries=5, max_closed_sessions=1)
    async with open_stream(emu.ws) as ws:
        begin = json.loads(await ws.recv())
        for _ in range(8):
            await ws.send(json.dumps({"type": "KeepAlive"}))
        await ws.send(json.dumps({"type": "Terminate"}))
        await drain(ws)
    detail = await emu.session(begin["id"])
    assert len(detail["timeline"]) == 5 and detail["timeline_dropped"] == 4
    assert detail["timeline"][-1]["seq"] == 9
    async with open_stream(emu.ws) as ws:
        await ws.recv()

    async def forgotten() -> bool:  # only one closed session is kept: once the second closed
        status, _ = await emu.request("GET", f"/_emulator/sessions/{begin['id']}")
        assert status == 404, status
        return True

    await eventually(forgotten)


async def test_agent_reject_next_update_and_fail_fields(emulator: Emulator) -> None:
    async with open_agent(emulator.ws) as ws:
        await send(ws, FIRST)
        ready = await expect(ws)
        sid = ready["session_id"]
        faults = {
            "reject_next_update": {"code": "invalid_config", "message": "nope"},
            "fail_fields": {"input.turn_detection": "invalid_value"},
        }
        doc = await emulator.post(f"/_emulator/sessions/{sid}/faults", faults)
        assert doc["faults"]["reject_next_update"]["code"] == "invalid_config"
        await send(ws, {"type": "session.update", "session": {"system_prompt": "a"}})
        error = await expect(ws)
        assert (error["code"], error["message"]) == ("invalid_config", "nope")
        await send(ws, {"type": "session.update", "session": {"system_prompt": "b"}})
        assert (await expect(ws))["config"]["system_prompt"] == "b"  # only the next one
        touch = {"input": {"turn_detection": {"min_silence": 700}}}
        await send(ws, {"type": "session.update", "session": touch})
        error = await expect(ws)
        assert error["code"] == "invalid_value"
        assert error["param"] == "input.turn_detection.min_silence"
        await send(ws, {"type": "session.update", "session": {"system_prompt": "c"}})
        updated = await expect(ws)
        assert updated["config"]["input"]["turn_detection"]["min_silence"] == 1000
    detail = await emulator.session(sid)
    sent = [e["sent"] for e in detail["timeline"]]
    assert sent[1][0]["code"] == "invalid_config" and sent[2] == [{"type": "session.updated"}]


async def test_streaming_reject_next_update_styles(emulator: Emulator) -> None:
    async with open_stream(emulator.ws) as ws:
        begin = json.loads(await ws.recv())
        path = f"/_emulator/sessions/{begin['id']}/faults"
        await emulator.post(path, {"reject_next_update": {"style": "warning", "code": 3999}})
        await ws.send(json.dumps({"type": "UpdateConfiguration", "max_turn_silence": 900}))
        warning = json.loads(await ws.recv())
        assert (warning["type"], warning["warning_code"]) == ("Warning", 3999)
        await emulator.post(path, {"fail_fields": {"prompt": 3998}})
        update = {"type": "UpdateConfiguration", "prompt": "p", "max_turn_silence": 800}
        await ws.send(json.dumps(update))
        warning = json.loads(await ws.recv())
        assert warning["warning_code"] == 3998 and "prompt" in warning["warning"]
        await emulator.post(path, {"reject_next_update": {"message": "Invalid Message: boom"}})
        await ws.send(json.dumps({"type": "UpdateConfiguration", "max_turn_silence": 700}))
        messages, code, reason = await drain(ws)
    assert messages[-1]["type"] == "Error"
    assert code == SV3_CLOSE["invalid_message"] and reason == "Invalid Message: boom"
    detail = await emulator.session(begin["id"])
    assert detail["config"]["max_turn_silence"] == 800  # the warned update kept the rest
    assert "prompt" not in detail["config"]


async def test_drop_after_messages_makes_the_agent_session_resumable(emulator: Emulator) -> None:
    await emulator.post("/_emulator/faults", {"drop_after_messages": 2})
    assert (await emulator.get("/_emulator/faults"))["faults"]["drop_after_messages"] == 2
    ws = await open_agent(emulator.ws)
    await send(ws, FIRST)
    ready = await expect(ws)
    await send(ws, {"type": "session.update", "session": {"system_prompt": "x"}})
    await expect(ws)  # session.updated is sent, then the TCP connection is aborted
    try:
        await expect(ws)
    except ConnectionClosed:
        pass
    assert ws.close_code == 1006

    async def suspended() -> bool:  # the emulator notices its own abort's EOF
        assert (await emulator.session(ready["session_id"]))["state"] == "suspended"
        return True

    await eventually(suspended)
    await emulator.post("/_emulator/faults", {"drop_after_messages": None})
    async with open_agent(emulator.ws) as again:
        await send(again, {"type": "session.resume", "session_id": ready["session_id"]})
        assert (await expect(again))["config"]["system_prompt"] == "x"


async def test_latency_fault_delays_each_control_message(emulator: Emulator) -> None:
    async with open_agent(emulator.ws) as ws:
        await send(ws, FIRST)
        ready = await expect(ws)
        path = f"/_emulator/sessions/{ready['session_id']}/faults"
        await emulator.post(path, {"latency_ms": 300})
        start = time.monotonic()
        await send(ws, {"type": "session.update", "session": {"system_prompt": "slow"}})
        await expect(ws)
        assert time.monotonic() - start >= 0.3


async def test_operator_close_injects_a_server_failure(emulator: Emulator) -> None:
    async with open_stream(emulator.ws) as ws:
        begin = json.loads(await ws.recv())
        doc = await emulator.post(f"/_emulator/sessions/{begin['id']}/close", {})
        messages, code, reason = await drain(ws)
    assert doc["closed"]["code"] == SV3_CLOSE["cancelled"]
    assert (code, reason) == (SV3_CLOSE["cancelled"], "Session Cancelled: An error occurred")
    assert messages[0]["type"] == "Error"
    detail = await emulator.session(begin["id"])
    assert (detail["close_code"], detail["closed_by"]) == (SV3_CLOSE["cancelled"], "server")
    async with open_agent(emulator.ws) as ws:
        await send(ws, FIRST)
        ready = await expect(ws)
        await emulator.post(f"/_emulator/sessions/{ready['session_id']}/close", {})
        error = await expect(ws)
        assert error["code"] == "internal_error"
        try:
            await expect(ws)
        except ConnectionClosed:
            pass
        assert ws.close_code == VA_CLOSE["internal"]
    detail = await emulator.session(ready["session_id"])
    assert detail["state"] == "closed" and detail["close_code"] == VA_CLOSE["internal"]


async def test_invalid_fault_documents_are_400(emulator: Emulator) -> None:
    status, body = await emulator.request("POST", "/_emulator/faults", {"latency": 5})
    assert status == 400 and body["error"]["code"] == "invalid_faults"
    status, body = await emulator.request("POST", "/_emulator/faults", {"latency_ms": -1})
    assert status == 400


async def test_concurrency_cap_closes_3009(start_emulator: StartEmulator) -> None:
    emu = await start_emulator(max_concurrent_sessions=1)
    async with open_stream(emu.ws) as first:
        await first.recv()
        async with open_stream(emu.ws) as second:
            _, code, reason = await drain(second)
    assert code == SV3_CLOSE["too_many_sessions"]
    assert reason == "Unauthorized Connection: Too many concurrent sessions"
