"""Issue 17: locks hold on the *effect* of a client message, and the record equals what the
upstream runs (the emulator's ``config``), through real sockets."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import websockets

from sessions.dialects.streaming_v3_upstream import canonical_view
from tests.integration.service.conftest import ControlPlaneUnderTest, Emulator, eventually

CONNECT = "/v3/ws?sample_rate=16000&speech_model=universal-3-5-pro"
HEADERS = {"Authorization": "test-key"}
LOCKED = {"max_turn_silence_ms": 2500, "min_turn_silence_ms": 400, "vad_threshold": 0.6}


async def _recorded_now(cp: ControlPlaneUnderTest, session_id: str) -> dict[str, Any]:
    """The configuration our record says is in effect now (``config-at``, verified)."""
    await asyncio.sleep(0.01)
    answer = await cp.call(
        "GET", f"/v1/sessions/{session_id}/config-at?at={time.time():.6f}", expect=200
    )
    assert answer["verified"] is True, answer
    return dict(answer["config"])


async def _recv_type(ws: Any, kind: str) -> dict[str, Any]:
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if msg.get("type") == kind:
            return dict(msg)


async def test_mode_preset_cannot_override_locked_fields(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    await cp.publish({
        "id": "turns", "match": {"kind": ["streaming-v3"]}, "set": LOCKED, "lock": list(LOCKED),
    })  # fmt: skip
    async with websockets.connect(cp.ws_base + CONNECT, additional_headers=HEADERS) as ws:
        upstream_id = (await _recv_type(ws, "Begin"))["id"]
        session_id = cp.live_by_upstream(upstream_id)
        emu = (await emulator.session(upstream_id))["config"]
        assert (emu["max_turn_silence"], emu["min_turn_silence"], emu["vad_threshold"]) == (
            2500,
            400,
            0.6,
        )

        await ws.send(json.dumps({"type": "UpdateConfiguration", "mode": "min_latency"}))
        warning = await _recv_type(ws, "Warning")
        assert warning["warning_code"] == 3010
        assert "mode" in warning["warning"] and "max_turn_silence_ms" in warning["warning"]
        # a preset next to an unlocked field: the preset goes, the field stays
        await ws.send(json.dumps(
            {"type": "UpdateConfiguration", "mode": "max_accuracy", "keyterms_prompt": ["acme"]}
        ))  # fmt: skip
        await _recv_type(ws, "Warning")

        async def forwarded() -> list[Any]:
            return await emulator.updates(upstream_id)

        assert await eventually(forwarded) == [
            {"type": "UpdateConfiguration", "keyterms_prompt": ["acme"]}
        ]
        emu = (await emulator.session(upstream_id))["config"]
        assert emu["mode"] == "balanced"
        assert (emu["max_turn_silence"], emu["min_turn_silence"], emu["vad_threshold"]) == (
            2500,
            400,
            0.6,
        )
        recorded = await _recorded_now(cp, session_id)
        view = canonical_view(emu)
        assert recorded == {**LOCKED, "keyterms": ["acme"]}
        assert {k: view[k] for k in recorded} == {**LOCKED, "keyterms": ("acme",)}

        entries = await cp.log(session_id)
        refused = [e for e in entries if e["cause"] == "client" and e["status"] == "rejected"]
        assert [e["delta"] for e in refused] == [
            {"min_turn_silence_ms": 128, "max_turn_silence_ms": 640, "vad_threshold": 0.2},
            {"min_turn_silence_ms": 512, "max_turn_silence_ms": 2560, "vad_threshold": 0.2},
        ]
        assert "mode would change" in refused[0]["error"]
        assert "locked by policy turns v1" in refused[0]["error"]


async def test_unlocked_preset_is_logged_with_its_effective_delta(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    async with websockets.connect(cp.ws_base + CONNECT, additional_headers=HEADERS) as ws:
        upstream_id = (await _recv_type(ws, "Begin"))["id"]
        session_id = cp.live_by_upstream(upstream_id)
        await ws.send(json.dumps({"type": "UpdateConfiguration", "mode": "min_latency"}))
        # min_turn_silence below the upstream's clamp: it runs 50, and so says our record
        await ws.send(json.dumps({"type": "UpdateConfiguration", "min_turn_silence": 20}))

        async def two() -> list[Any]:
            found = await emulator.updates(upstream_id)
            return found if len(found) == 2 else []

        await eventually(two)
        entries = await eventually(lambda: _client_sent(cp, session_id, 2))
        # min_latency differs from the balanced preset the session ran only in max_turn_silence
        assert [e["delta"] for e in entries] == [
            {"max_turn_silence_ms": 640},
            {"min_turn_silence_ms": 50},
        ]
        emu = (await emulator.session(upstream_id))["config"]
        recorded = await _recorded_now(cp, session_id)
        assert recorded == {"min_turn_silence_ms": 50, "max_turn_silence_ms": 640}
        view = canonical_view(emu)
        assert {k: view[k] for k in recorded} == recorded
        assert view["vad_threshold"] == 0.2  # unset in the record: the model's default


async def _client_sent(cp: ControlPlaneUnderTest, session_id: str, n: int) -> list[Any]:
    entries = [e for e in await cp.log(session_id) if e["cause"] == "client"]
    return entries if len(entries) == n else []
