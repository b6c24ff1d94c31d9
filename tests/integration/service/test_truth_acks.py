"""Issue 17, Voice Agent through the gateway against the emulator: every client update gets
an answer, and answers are attributed to the message that caused them, never guessed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets

from tests.integration.service.conftest import ControlPlaneUnderTest, Emulator

HEADERS = {"Authorization": "Bearer test-key"}
LOCK = {
    "id": "turns", "match": {"kind": ["voice-agent-v1"]},
    "set": {"max_turn_silence_ms": 2500, "system_prompt": "Be kind."},
    "lock": ["max_turn_silence_ms", "system_prompt"],
}  # fmt: skip


async def _recv_type(ws: Any, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if msg.get("type") == kind:
            return dict(msg)


async def _open(cp: ControlPlaneUnderTest) -> tuple[Any, str, str]:
    ws = await websockets.connect(cp.ws_base + "/v1/ws", additional_headers=HEADERS)
    await ws.send(json.dumps({"type": "session.update", "session": {"system_prompt": "Hi."}}))
    upstream_id = (await _recv_type(ws, "session.ready"))["session_id"]
    return ws, upstream_id, cp.live_by_upstream(upstream_id)


async def test_an_update_of_locked_fields_only_is_answered_with_a_session_error(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    await cp.publish(LOCK)
    ws, upstream_id, session_id = await _open(cp)
    try:
        await ws.send(json.dumps({"type": "session.update", "session": {
            "system_prompt": "Be rude.", "input": {"turn_detection": {"max_silence": 900}},
        }}))  # fmt: skip
        error = await _recv_type(ws, "session.error")
        assert error["code"] == "immutable_field"
        assert error["param"] == "system_prompt"
        assert "input.turn_detection.max_silence (max_turn_silence_ms)" in error["message"]
        assert "locked by policy turns v1" in error["message"]
        assert await emulator.updates(upstream_id, "session.update") == [
            {"type": "session.update", "session": {
                "system_prompt": "Be kind.", "input": {"turn_detection": {"max_silence": 2500}}
            }}
        ]  # fmt: skip
        entries = await cp.log(session_id)
        refused = [e for e in entries if e["cause"] == "client"]
        assert [(e["status"], e["delta"]) for e in refused] == [
            ("rejected", {"system_prompt": "Be rude.", "max_turn_silence_ms": 900})
        ]
        # the rest of a partly locked update goes upstream and is answered as usual
        await ws.send(json.dumps({"type": "session.update", "session": {
            "system_prompt": "Be rude.", "output": {"volume": 40},
        }}))  # fmt: skip
        assert (await _recv_type(ws, "session.error"))["param"] == "system_prompt"
        updated = await _recv_type(ws, "session.updated")
        assert updated["config"]["output"]["volume"] == 40
        assert updated["config"]["system_prompt"] == "Be kind."
    finally:
        await ws.close()
