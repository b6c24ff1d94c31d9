"""Issue 4 acceptance, Voice Agent through the gateway against the emulator."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets

from tests.integration.service.conftest import ControlPlaneUnderTest, Emulator, eventually


async def _recv_type(ws: Any, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if msg.get("type") == kind:
            return dict(msg)


async def test_agent_push_is_acked_and_a_rejected_version_is_not_repushed(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    async with websockets.connect(
        cp.ws_base + "/v1/ws", additional_headers={"Authorization": "Bearer test-key"}
    ) as ws:
        await ws.send(json.dumps(
            {"type": "session.update", "session": {"system_prompt": "Be kind."}}
        ))  # fmt: skip
        ready = await _recv_type(ws, "session.ready")
        upstream_id = ready["session_id"]
        session_id = cp.live_by_upstream(upstream_id)

        await cp.publish({"id": "tone", "match": {"kind": ["voice-agent-v1"]},
                          "set": {"system_prompt": "Be concise."}})  # fmt: skip

        async def acked() -> list[dict[str, Any]]:
            entries = await cp.log(session_id)
            return [e for e in entries if e["status"] == "acked" and e["cause"] == "policy"]

        done = await eventually(acked)
        assert done[0]["version"] == 2
        updates = await emulator.updates(upstream_id, "session.update")
        assert updates[-1] == {"type": "session.update",
                               "session": {"system_prompt": "Be concise."}}  # fmt: skip
        session = await cp.session(session_id)
        assert session["versions"]["acked"] == 2
        assert session["state"] == "synced"

        await emulator.faults(upstream_id, {"reject_next_update": {"code": "invalid_config"}})
        await cp.publish({"id": "tone", "match": {"kind": ["voice-agent-v1"]},
                          "set": {"system_prompt": "Be brief."}})  # fmt: skip

        async def rejected() -> list[dict[str, Any]]:
            entries = await cp.log(session_id)
            return [e for e in entries if e["status"] == "rejected"]

        bad = await eventually(rejected)
        assert bad[0]["version"] == 3
        assert "invalid_config" in bad[0]["error"]
        count = len(await emulator.updates(upstream_id, "session.update"))
        await asyncio.sleep(cp.service.settings.ack_timeout_s / 3)
        assert len(await emulator.updates(upstream_id, "session.update")) == count
        session = await cp.session(session_id)
        assert session["state"] == "rejected"
        assert session["versions"] == {"desired": 3, "sent": 3, "acked": 2}

        # our pushes' acknowledgements are not forwarded to the client
        await ws.send(json.dumps(
            {"type": "session.update", "session": {"output": {"volume": 50}}}
        ))  # fmt: skip
        updated = await _recv_type(ws, "session.updated")
        assert updated["config"]["output"]["volume"] == 50
