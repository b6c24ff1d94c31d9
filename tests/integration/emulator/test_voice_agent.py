"""Voice Agent API over real sockets: handshake, updates, mutability, resume, conversation."""

from __future__ import annotations

import asyncio
import base64
import re
from typing import Any

from websockets.exceptions import ConnectionClosed

from emulator.assets import pattern_audio
from sessions.dialects.voice_agent_v1_table import CLOSE, DEFAULT_CONFIG
from tests.integration.emulator.agent_client import (
    audio_frames,
    expect,
    open_agent,
    send,
    until,
)
from tests.integration.emulator.conftest import Emulator, StartEmulator
from tests.integration.service.conftest import eventually

FIRST = {
    "type": "session.update",
    "session": {
        "system_prompt": "You are a helpful agent.",
        "output": {"voice": "ivy"},
        "input": {"keyterms": ["Acme"]},
    },
}


async def _closed(ws: Any) -> tuple[int | None, str | None]:
    try:
        while True:
            await expect(ws)
    except ConnectionClosed:
        return ws.close_code, ws.close_reason


async def test_first_update_gets_ready_and_later_updates_get_full_config(
    emulator: Emulator,
) -> None:
    async with open_agent(emulator.ws) as ws:
        await send(ws, FIRST)
        ready = await expect(ws)
        assert ready["type"] == "session.ready"
        assert re.fullmatch(r"sess_[0-9a-f]{32}", ready["session_id"])
        assert isinstance(ready["expires_at"], int) and ready["resume_token"]
        config = ready["config"]
        assert config["system_prompt"] == "You are a helpful agent."
        assert config["input"]["keyterms"] == ["Acme"]
        assert config["input"]["turn_detection"] == DEFAULT_CONFIG["input"]["turn_detection"]  # type: ignore[index]
        await send(
            ws,
            {
                "type": "session.update",
                "session": {
                    "system_prompt": "Be brief.",
                    "input": {"turn_detection": {"max_silence": 1500}},
                    "tools": [{"type": "function", "name": "lookup_order"}],
                },
            },
        )
        updated = await expect(ws)
        assert updated["type"] == "session.updated"
        full = updated["config"]
        assert full["system_prompt"] == "Be brief."
        assert full["input"]["turn_detection"]["max_silence"] == 1500
        assert full["input"]["turn_detection"]["min_silence"] == 1000  # untouched default kept
        assert full["input"]["keyterms"] == ["Acme"]
        assert full["output"]["voice"] == "ivy"
        assert full["tools"] == [{"type": "function", "name": "lookup_order"}]
        await send(ws, {"type": "session.update", "session": {"tools": []}})
        assert (await expect(ws))["config"]["tools"] == []  # tools replace, no merge
    detail = await emulator.session(ready["session_id"])
    assert detail["kind"] == "voice-agent-v1" and detail["model"] == "voice-agent"
    kinds = [e["message"]["type"] for e in detail["timeline"]]
    assert kinds == ["session.update"] * 3
    assert detail["timeline"][1]["config"]["system_prompt"] == "Be brief."
    assert detail["timeline"][1]["sent"] == [{"type": "session.updated"}]


async def test_changing_the_voice_is_refused_and_the_session_keeps_working(
    emulator: Emulator,
) -> None:
    async with open_agent(emulator.ws) as ws:
        await send(ws, FIRST)
        ready = await expect(ws)
        await send(ws, {"type": "session.update", "session": {"output": {"voice": "james"}}})
        error = await expect(ws)
        assert error["type"] == "session.error"
        assert (error["code"], error["param"]) == ("immutable_field", "output.voice")
        await send(ws, {"type": "session.update", "session": {"greeting": "Hi again"}})
        error = await expect(ws)
        assert (error["code"], error["param"]) == ("immutable_field", "greeting")
        await send(ws, {"type": "session.update", "session": {"system_prompt": "Still here."}})
        updated = await expect(ws)
        assert updated["type"] == "session.updated"
        assert updated["config"]["output"]["voice"] == "ivy"  # the change was dropped
        assert updated["config"]["system_prompt"] == "Still here."
    detail = await emulator.session(ready["session_id"])
    assert detail["timeline"][1]["sent"][0]["code"] == "immutable_field"


async def test_bad_voice_and_audio_before_ready_keep_the_socket_open(emulator: Emulator) -> None:
    async with open_agent(emulator.ws) as ws:
        await ws.send(audio_frames(b"\x00" * 4800)[0])
        error = await expect(ws)
        assert (error["type"], error["code"]) == ("session.error", "invalid_format")
        await send(ws, {"type": "session.update", "session": {"output": {"voice": "claire"}}})
        error = await expect(ws)
        assert (error["code"], error["param"]) == ("invalid_value", "output.voice")
        await send(ws, {"type": "session.update", "session": {"tools": [{"name": "x"}]}})
        error = await expect(ws)
        assert (error["code"], error["param"]) == ("invalid_config", "tools[0].type")
        await send(ws, FIRST)
        ready = await expect(ws)
        assert ready["type"] == "session.ready"
        await ws.send("not json")
        assert (await expect(ws))["code"] == "invalid_format"
        await send(ws, {"type": "input.audio", "audio": "%%%"})
        assert (await expect(ws))["code"] == "invalid_audio"
        await send(ws, {"type": "session.end"})
        ended = await expect(ws)
        assert ended["type"] == "session.ended"
        assert await _closed(ws) == (CLOSE["normal"], "")
    detail = await emulator.session(ready["session_id"])
    messages = [e["message"] for e in detail["timeline"]]
    assert messages[0]["type"] == "input.audio"  # pre-session messages are kept too
    assert detail["state"] == "closed"


async def test_bad_auth_is_unauthorized_and_1008(start_emulator: StartEmulator) -> None:
    emu = await start_emulator(api_keys=frozenset({"test-key"}))
    for headers in ({}, {"Authorization": "test-key"}, {"Authorization": "Bearer nope"}):
        async with open_agent(emu.ws, headers) as ws:
            error = await expect(ws)
            assert (error["type"], error["code"]) == ("session.error", "unauthorized")
            assert (await _closed(ws))[0] == CLOSE["policy"]
    raw_ok = await start_emulator(agent_accept_raw_key=True)
    async with open_agent(raw_ok.ws, {"Authorization": "test-key"}) as ws:
        await send(ws, FIRST)
        assert (await expect(ws))["type"] == "session.ready"


async def test_resume_within_the_window_restores_the_session(emulator: Emulator) -> None:
    ws = await open_agent(emulator.ws)
    await send(ws, FIRST)
    ready = await expect(ws)
    await send(ws, {"type": "session.update", "session": {"system_prompt": "Remember me."}})
    await expect(ws)
    ws.transport.abort()  # network drop: no close frame, no session.end
    await ws.wait_closed()

    async def suspended() -> list[Any]:  # the emulator notices the drop (its socket's EOF)
        return [s["id"] for s in (await emulator.get("/_emulator/sessions?state=suspended"))
                ["items"]]  # fmt: skip

    assert await eventually(suspended) == [ready["session_id"]]

    async with open_agent(emulator.ws) as again:
        await send(again, {"type": "session.resume", "session_id": ready["session_id"]})
        resumed = await expect(again)
        assert resumed["type"] == "session.ready"
        assert resumed["session_id"] == ready["session_id"]
        assert resumed["config"]["system_prompt"] == "Remember me."
        await send(again, {"type": "session.update", "session": {"system_prompt": "Back."}})
        assert (await expect(again))["type"] == "session.updated"
        await send(again, {"type": "session.end"})
        assert (await expect(again))["type"] == "session.ended"
    detail = await emulator.session(ready["session_id"])
    assert detail["counters"]["connections"] == 2 and detail["state"] == "closed"

    async with open_agent(emulator.ws) as late:  # session.end killed the id
        await send(late, {"type": "session.resume", "session_id": ready["session_id"]})
        error = await expect(late)
        assert error["code"] == "session_not_found"
        assert (await _closed(late))[0] == CLOSE["policy"]


async def test_resume_with_the_resume_token_as_bearer(emulator: Emulator) -> None:
    async with open_agent(emulator.ws) as ws:
        await send(ws, FIRST)
        ready = await expect(ws)
    # a clean close without session.end still counts as a drop (resumable)
    headers = {"Authorization": f"Bearer {ready['resume_token']}"}
    async with open_agent(emulator.ws, headers) as again:
        await send(again, {"type": "session.resume", "session_id": ready["session_id"]})
        assert (await expect(again))["session_id"] == ready["session_id"]


async def test_resume_after_the_window_is_session_not_found_1008(
    start_emulator: StartEmulator,
) -> None:
    emu = await start_emulator(resume_window_s=0.5)
    ws = await open_agent(emu.ws)
    await send(ws, FIRST)
    ready = await expect(ws)
    ws.transport.abort()
    await ws.wait_closed()
    await asyncio.sleep(0.7)
    async with open_agent(emu.ws) as again:
        await send(again, {"type": "session.resume", "session_id": ready["session_id"]})
        error = await expect(again)
        assert error["type"] == "session.error"
        assert error["code"] == "session_not_found"
        assert error["message"] == "Session not found or grace window has expired"
        assert (await _closed(again))[0] == CLOSE["policy"]
    detail = await emu.session(ready["session_id"])
    assert detail["state"] == "closed" and detail["close_reason"] == "resume window expired"


async def test_resume_can_be_configured_to_always_fail(start_emulator: StartEmulator) -> None:
    emu = await start_emulator(resume_mode="always_not_found")
    async with open_agent(emu.ws) as ws:
        await send(ws, FIRST)
        ready = await expect(ws)
    async with open_agent(emu.ws) as again:
        await send(again, {"type": "session.resume", "session_id": ready["session_id"]})
        assert (await expect(again))["code"] == "session_not_found"


TALK = pattern_audio([("speech", 900), ("silence", 700)], sample_rate=24_000)
QUICK: dict[str, Any] = {"input": {"turn_detection": {"min_silence": 300, "max_silence": 500}}}


async def test_conversation_turn_reply_and_audio(fast_emulator: Emulator) -> None:
    async with open_agent(fast_emulator.ws) as ws:
        await send(ws, {"type": "session.update", "session": {**QUICK, "greeting": "Hello there"}})
        assert (await expect(ws))["type"] == "session.ready"
        greeting, done = await until(ws, "reply.done", timeout=5)  # greeting plays (wall clock)
        assert greeting[0]["type"] == "reply.started"
        assert greeting[-1] == {
            "type": "transcript.agent",
            "reply_id": done["reply_id"],
            "item_id": greeting[0]["item_id"],
            "text": "Hello there",
            "interrupted": False,
        }
        for frame in audio_frames(TALK):
            await ws.send(frame)
        before, reply_done = await until(ws, "reply.done")
    kinds = [m["type"] for m in before]
    assert kinds[0] == "input.speech.started"
    assert "transcript.user.delta" in kinds
    stopped = kinds.index("input.speech.stopped")
    assert kinds[stopped + 1 : stopped + 3] == ["transcript.user", "reply.started"]
    user = before[stopped + 1]["text"]
    audio = [m for m in before if m["type"] == "reply.audio"]
    assert audio and all(m["reply_id"] == reply_done["reply_id"] for m in audio)
    assert len(base64.b64decode(audio[0]["data"])) == 24_000 * 2 * 300 // 1000  # 24 kHz s16le
    agent = before[-1]
    assert agent["type"] == "transcript.agent" and agent["text"] == f"You said: {user}"
    assert reply_done["status"] == "completed"


async def test_barge_in_interrupts_the_reply(fast_emulator: Emulator) -> None:
    async with open_agent(fast_emulator.ws) as ws:
        await send(ws, {"type": "session.update", "session": QUICK})
        await expect(ws)
        gap = pattern_audio([("silence", 400)], sample_rate=24_000)
        for frame in audio_frames(TALK + gap + TALK):  # the user talks while the agent speaks
            await ws.send(frame)
        before, done = await until(ws, "reply.done")
        await send(ws, {"type": "session.end"})
        assert (await _closed(ws))[0] == CLOSE["normal"]
    assert done["status"] == "interrupted"
    agent = before[-1]
    assert agent["type"] == "transcript.agent" and agent["interrupted"] is True
    # the reply started at 1.4 s of input audio (900 ms speech + 500 ms max_silence) and the
    # user spoke again at 2.0 s: 600 ms played = the first two 300 ms words
    assert agent["text"] == "You said:"
    assert before.count({"type": "input.speech.started", "timestamp": 2.0}) == 1


async def test_tool_call_when_the_user_mentions_the_tool(fast_emulator: Emulator) -> None:
    tool = {
        "type": "function",
        "name": "lookup_order",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
    }
    session: dict[str, Any] = {**QUICK, "tools": [tool]}
    session["input"] = {**QUICK["input"], "keyterms": ["lookup_order"]}
    async with open_agent(fast_emulator.ws) as ws:
        await send(ws, {"type": "session.update", "session": session})
        await expect(ws)
        for frame in audio_frames(TALK):
            await ws.send(frame)
        before, call = await until(ws, "tool.call")
        assert before[-1]["type"] == "reply.started"
        assert call["name"] == "lookup_order" and isinstance(call["arguments"], dict)
        assert set(call["arguments"]) == {"order_id"}
        done = await expect(ws)
        assert (done["type"], done["status"]) == ("reply.done", "completed")
        await send(
            ws, {"type": "tool.result", "call_id": call["call_id"], "result": '{"eta":"2d"}'}
        )
        _, agent = await until(ws, "transcript.agent")
        assert agent["text"] == 'The lookup_order result is {"eta":"2d"}.'
        await send(ws, {"type": "tool.result", "call_id": "call_unknown", "result": "{}"})
        _, error = await until(ws, "session.error")
        assert (error["code"], error["param"]) == ("invalid_value", "call_id")


async def test_agent_token_is_single_use_query_credential(emulator: Emulator) -> None:
    import aiohttp

    async with (
        aiohttp.ClientSession(headers={"Authorization": "Bearer test-key"}) as client,
        client.get(emulator.http + "/v1/token?expires_in_seconds=60") as resp,
    ):
        body = await resp.json()
    assert body["expires_in_seconds"] == 60
    url_base = emulator.ws
    async with open_agent(url_base, {}) as ws:  # no header: refused
        assert (await expect(ws))["code"] == "unauthorized"
    from websockets.asyncio.client import connect

    async with connect(f"{url_base}/v1/ws?token={body['token']}", compression=None) as ws:
        await send(ws, FIRST)
        assert (await expect(ws))["type"] == "session.ready"
    async with connect(f"{url_base}/v1/ws?token={body['token']}", compression=None) as ws:
        assert (await expect(ws))["code"] == "unauthorized"  # single use
