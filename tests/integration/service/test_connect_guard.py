"""A Voice Agent connect the upstream refuses, and the rollout guard (docs/policies.md#guard):
the refusal counts against the policy versions owning the fields it names (``param``), as a
refused push does; a refusal naming only the client's own fields charges no policy.

The emulator here caps ``input.transcription_prompt`` at 10 characters (an upstream that
tightened a limit after the policy was published): a policy's longer ``prompt``, merged into
the client's first ``session.update``, is refused at connect.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from controlplane.config import Settings
from emulator.server import build_app as build_emulator
from emulator.settings import EmulatorSettings
from tests.integration.service.conftest import (
    TOKENS,
    ControlPlaneUnderTest,
    _serve,
    eventually,
    serving,
)

HEADERS = {"Authorization": "Bearer test-key"}
GUARD = {"min_sessions": 1, "max_failure_ratio": 0.0}


@pytest.fixture
async def strict(tmp_path: Path) -> AsyncIterator[ControlPlaneUnderTest]:
    emulator = build_emulator(EmulatorSettings(transcription_prompt_max_chars=10))
    em_runner, em_port = await _serve(emulator)
    settings = Settings(
        listen="127.0.0.1:0", data_dir=tmp_path / "data", node_id="node-a", tokens=TOKENS,
        upstream_streaming_url=f"ws://127.0.0.1:{em_port}/v3/ws",
        upstream_agent_url=f"ws://127.0.0.1:{em_port}/v1/ws",
        ack_timeout_s=3.0, shutdown_grace_s=0.5,
    )  # fmt: skip
    async with serving(settings) as cp:
        yield cp
    await em_runner.cleanup()


async def _refused_connect(cp: ControlPlaneUnderTest, session: dict[str, Any]) -> Any:
    ws = await websockets.connect(cp.ws_base + "/v1/ws", additional_headers=HEADERS)
    await ws.send(json.dumps({"type": "session.update", "session": session}))
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if msg["type"] == "session.error":
            return ws, msg


async def _state(cp: ControlPlaneUnderTest, policy_id: str) -> str:
    body = await cp.call("GET", f"/v1/policies/{policy_id}/rollout", expect=200)
    return str(body["state"])


async def test_a_connect_refused_for_a_policy_field_counts_against_that_policy(
    strict: ControlPlaneUnderTest,
) -> None:
    cp = strict
    await cp.publish({"id": "long", "match": {"kind": ["voice-agent-v1"]},
                      "set": {"prompt": "a prompt longer than ten"}, "guard": GUARD})  # fmt: skip
    await cp.publish({"id": "tone", "match": {"kind": ["voice-agent-v1"]},
                      "set": {"system_prompt": "Be kind."}, "guard": GUARD})  # fmt: skip
    ws, error = await _refused_connect(cp, {})
    try:
        assert error["param"] == "input.transcription_prompt", error
        [sid] = list(cp.service.engine.live)
        log = await cp.log(sid)
        assert [(e["cause"], e["status"]) for e in log] == [("connect", "sent"),
                                                           ("connect", "rejected")]  # fmt: skip
        await eventually(lambda: _halted(cp, "long"), timeout=5)
        assert await _state(cp, "tone") == "active"  # rode along: not charged
        # the halted version is no longer merged in: the client's retry runs without it
        await ws.send(json.dumps({"type": "session.update", "session": {}}))
        while json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] != "session.ready":
            pass
        log = await cp.log(sid)
        assert [(e["cause"], e["status"]) for e in log[2:]] == [
            ("connect", "sent"), ("connect", "acked")]  # fmt: skip
        assert log[2]["version"] == log[3]["version"] > 1
        assert "prompt" not in log[2]["wire"]["first_message"]["session"].get("input", {})
    finally:
        await ws.close()


async def _halted(cp: ControlPlaneUnderTest, policy_id: str) -> bool:
    return await _state(cp, policy_id) == "halted"


async def test_a_connect_refused_for_the_clients_own_field_charges_no_policy(
    strict: ControlPlaneUnderTest,
) -> None:
    cp = strict
    await cp.publish({"id": "tone", "match": {"kind": ["voice-agent-v1"]},
                      "set": {"system_prompt": "Be kind."}, "guard": GUARD})  # fmt: skip
    ws, error = await _refused_connect(cp, {"input": {"voice_focus": "mid-field"}})
    try:
        assert error["param"] == "input.voice_focus", error

        async def recorded() -> bool:  # the connect's record says refused
            body = await cp.call("GET", "/v1/policies/tone/rollout", expect=200)
            return bool(body["totals"]["rejected"] >= 1)

        await eventually(recorded)
        await asyncio.sleep(0.3)  # the guard checks right after a failure: it must not halt
        assert await _state(cp, "tone") == "active"
        body = await cp.call("GET", "/v1/policies/tone/rollout", expect=200)
        assert body["totals"]["rejected"] == 1, body  # the connect's record says refused
    finally:
        await ws.close()
