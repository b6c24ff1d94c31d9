"""Issue 17 follow-ups, Voice Agent through the gateway against the emulator: a push that
waits behind the client's unanswered ``session.update`` (one outstanding per session) is
timed from when it actually goes upstream, and the record says what the emulator ran."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets

from controlplane.app import SERVICE, build_app
from controlplane.config import Settings
from emulator.server import build_app as build_emulator
from emulator.settings import EmulatorSettings
from tests.integration.service.conftest import (
    TOKENS,
    ControlPlaneUnderTest,
    Emulator,
    _serve,
    eventually,
    serving,
)

HEADERS = {"Authorization": "Bearer test-key"}
ACK_TIMEOUT_S = 1.5
LATENCY_MS = 1000  # the emulator's wait before handling each message: < ACK_TIMEOUT_S, and
# the push's answer comes at ~2 x LATENCY_MS > ACK_TIMEOUT_S after it was taken
TONE = {
    "id": "tone",
    "match": {"kind": ["voice-agent-v1"]},
    "set": {"system_prompt": "Be concise."},
}


@pytest.fixture
async def cp_slow(cp_settings: Callable[..., Settings]) -> AsyncIterator[ControlPlaneUnderTest]:
    async with serving(cp_settings(ack_timeout_s=ACK_TIMEOUT_S)) as cp:
        yield cp


async def _open(cp: ControlPlaneUnderTest) -> tuple[Any, str, str]:
    ws = await websockets.connect(cp.ws_base + "/v1/ws", additional_headers=HEADERS)
    await ws.send(json.dumps({"type": "session.update", "session": {"system_prompt": "Hi."}}))
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if msg["type"] == "session.ready":
            return ws, msg["session_id"], cp.live_by_upstream(msg["session_id"])


async def _push_entries(cp: ControlPlaneUnderTest, session_id: str) -> list[Any]:
    entries = [e for e in await cp.log(session_id) if e["cause"] == "policy"]
    return entries if any(e["status"] != "sent" for e in entries) else []


async def test_a_push_queued_behind_a_client_update_is_timed_from_its_write(
    cp_slow: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    cp = cp_slow
    ws, upstream_id, session_id = await _open(cp)
    try:
        await emulator.faults(upstream_id, {"latency_ms": LATENCY_MS})
        await ws.send(json.dumps({"type": "session.update", "session": {"output": {"volume": 30}}}))

        def client_outstanding() -> bool:
            link = cp.service.engine.live[session_id].transport.link  # type: ignore[attr-defined]
            return link.model.outstanding is not None and link.model.outstanding.owner == "client"

        await eventually(client_outstanding)
        await cp.publish(TONE)  # taken now; it waits for the client's answer (~1 s)
        entries = await eventually(lambda: _push_entries(cp, session_id), timeout=8)
        assert [(e["status"], e.get("error")) for e in entries] == [
            ("sent", None), ("acked", None)
        ], entries  # fmt: skip
        # the record is what the emulator ran: both updates applied, ours after the client's
        body = await emulator.session(upstream_id)
        assert body["config"]["system_prompt"] == "Be concise."
        assert body["config"]["output"]["volume"] == 30
        updates = [t["message"]["session"] for t in body["timeline"]
                   if t["message"].get("type") == "session.update"]  # fmt: skip
        assert updates[1:] == [{"output": {"volume": 30}}, {"system_prompt": "Be concise."}]
        state = await cp.session(session_id)
        assert state["state"] == "synced", state
    finally:
        await ws.close()


async def test_a_push_still_queued_when_the_session_ends_is_recorded_not_sent(
    cp_slow: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    cp = cp_slow
    ws, upstream_id, session_id = await _open(cp)
    await emulator.faults(upstream_id, {"latency_ms": LATENCY_MS})
    await ws.send(json.dumps({"type": "session.update", "session": {"output": {"volume": 30}}}))
    ls = cp.service.engine.live[session_id]

    link = ls.transport.link  # type: ignore[attr-defined]
    await eventually(lambda: link.model.outstanding is not None)
    await cp.publish(TONE)
    await eventually(lambda: ls.push.in_flight is not None and link.model.queue)
    await ws.close()
    entries = await eventually(lambda: _push_entries(cp, session_id), timeout=8)
    assert [e["status"] for e in entries] == ["sent", "rejected"], entries
    assert entries[1]["error"].startswith("not sent"), entries[1]
    body = await emulator.session(upstream_id)
    updates = [
        t["message"] for t in body["timeline"] if t["message"].get("type") == "session.update"
    ]
    assert all(u["session"] != TONE["set"] for u in updates), updates


@pytest.fixture
async def emulator_apply_rest() -> AsyncIterator[Emulator]:
    app = build_emulator(
        EmulatorSettings(pacing_tolerance_ms=5000.0, immutable_policy="apply_rest")
    )
    runner, port = await _serve(app)
    async with aiohttp.ClientSession() as http:
        yield Emulator(port, http)
    await runner.cleanup()


async def test_a_partly_refused_push_records_the_part_the_upstream_applied(
    emulator_apply_rest: Emulator, tmp_path: Path
) -> None:
    """PROTOCOLS.md leaves open whether the Voice Agent API applies the rest of a
    session.update refused in part; the emulator does either (immutable_policy). Against an
    upstream that applies the rest, the push is recorded with what ran: ``acked`` with the
    applied part as its delta and the refusal as its error, never ``rejected``."""
    emulator = emulator_apply_rest
    settings = Settings(
        listen="127.0.0.1:0",
        upstream_streaming_url=f"ws://127.0.0.1:{emulator.port}/v3/ws",
        upstream_agent_url=f"ws://127.0.0.1:{emulator.port}/v1/ws",
        data_dir=tmp_path / "data", node_id="node-a", tokens=TOKENS, ack_timeout_s=3.0,
        shutdown_grace_s=0.5, agent_partial_updates="apply_rest",
    )  # fmt: skip
    app = build_app(settings)
    runner, port = await _serve(app)
    async with aiohttp.ClientSession() as http:
        cp = ControlPlaneUnderTest(port, http, app[SERVICE], settings.data_dir)
        ws, upstream_id, session_id = await _open(cp)
        try:
            await emulator.faults(upstream_id, {"fail_fields": {"system_prompt": None}})
            await cp.publish({"id": "tone", "match": {"kind": ["voice-agent-v1"]},
                              "set": {"system_prompt": "Be concise.",
                                      "max_turn_silence_ms": 2200}})  # fmt: skip
            entries = await eventually(lambda: _push_entries(cp, session_id), timeout=8)
            await asyncio.sleep(0.5)  # (nothing more may come: no re-push of the rest)
            entries = [e for e in await cp.log(session_id) if e["cause"] == "policy"]
            assert [(e["status"], e["version"], e["delta"]) for e in entries] == [
                ("sent", 2, {"max_turn_silence_ms": 2200, "system_prompt": "Be concise."}),
                ("acked", 2, {"max_turn_silence_ms": 2200}),
            ], entries  # fmt: skip
            assert "refused in part (invalid_value" in entries[1]["error"], entries[1]
            body = await emulator.session(upstream_id)
            assert body["config"]["system_prompt"] == "Hi."
            assert body["config"]["input"]["turn_detection"]["max_silence"] == 2200
            updates = [t for t in body["timeline"] if t["message"].get("type") == "session.update"]
            assert len(updates) == 2, updates  # the connect and the push: the rest not re-sent
            answer = await cp.call(
                "GET", f"/v1/sessions/{session_id}/config-at?at={time.time():.6f}", expect=200
            )
            assert answer["rebuild"]["verified"] is True, answer
            assert answer["config"] == {"system_prompt": "Hi.", "max_turn_silence_ms": 2200}
            state = await cp.session(session_id)
            assert state["state"] == "rejected", state  # the policy's prompt is not running
        finally:
            await ws.close()
    await runner.cleanup()
