"""A client that gives up during a slow upstream handshake (the SDKs time out after 1 s and
retry): no traceback, each upstream leg closed with a close frame, counted, nothing open."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import websockets
from assemblyai.streaming.v3 import (
    AsyncRealTimeTranscriber,
    RealTimeError,
    RealTimeEvents,
    RealTimeParameters,
    RealTimeTranscriberOptions,
)

from tests.integration.service.conftest import ControlPlaneUnderTest, Emulator, eventually

CONNECT = "/v3/ws?sample_rate=16000&speech_model=universal-3-5-pro"


async def _slow_handshake(emulator: Emulator, delay_ms: float) -> None:
    url = f"{emulator.base}/_emulator/faults"
    async with emulator.http.post(url, json={"handshake_delay_ms": delay_ms}) as resp:
        assert resp.status == 200, await resp.text()


async def _upstream_sessions(emulator: Emulator) -> list[dict[str, Any]]:
    async with emulator.http.get(f"{emulator.base}/_emulator/sessions") as resp:
        return list((await resp.json())["items"])


def _gone(cp: ControlPlaneUnderTest, kind: str) -> float:
    value = cp.service.metrics.registry.get_sample_value(
        "controlplane_gateway_client_gone_total", {"kind": kind}
    )
    return value or 0.0


async def test_python_sdk_retries_leave_no_upstream_session_open(
    cp: ControlPlaneUnderTest, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await _slow_handshake(emulator, 1500)  # above the SDK's 1 s connect timeout
    client = AsyncRealTimeTranscriber(
        RealTimeTranscriberOptions(api_key="test-key", api_host=cp.ws_base)
    )  # defaults: 3 attempts, 0.5 s apart
    errors: list[RealTimeError] = []
    client.on(RealTimeEvents.Error, lambda _c, error: errors.append(error))
    await client.connect(RealTimeParameters(sample_rate=16000,
                                            speech_model="universal-3-5-pro"))  # fmt: skip
    assert errors  # the SDK gave up after its retries

    async def three_closed() -> list[dict[str, Any]]:
        found = await _upstream_sessions(emulator)
        return found if len(found) == 3 and all(s["state"] == "closed" for s in found) else []

    sessions = await eventually(three_closed, timeout=10)
    for summary in sessions:  # each leg closed by the gateway with a close frame, not 1006
        detail = await emulator.session(summary["id"])
        assert detail["close_code"] == 1000, detail
    assert _gone(cp, "streaming-v3") == 3
    assert cp.service.engine.live == {}
    ours = ("controlplane", "sessions", "aiohttp")  # the SDK logs its own failure
    errors_logged = [r for r in caplog.records
                     if r.levelno >= logging.ERROR and r.name.startswith(ours)]  # fmt: skip
    assert errors_logged == []
    assert not any(r.exc_info for r in caplog.records if r.name.startswith("aiohttp"))

    await _slow_handshake(emulator, 0)  # the same client code connects once it is fast again
    client = AsyncRealTimeTranscriber(
        RealTimeTranscriberOptions(api_key="test-key", api_host=cp.ws_base)
    )
    await client.connect(RealTimeParameters(sample_rate=16000,
                                            speech_model="universal-3-5-pro"))  # fmt: skip
    try:
        await eventually(lambda: cp.service.engine.live)
    finally:
        await client.disconnect(terminate=True)
    assert _gone(cp, "streaming-v3") == 3


async def test_agent_client_leaving_during_the_upstream_handshake_starts_no_upstream_session(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    await _slow_handshake(emulator, 600)
    headers = {"Authorization": "Bearer test-key"}
    ws = await websockets.connect(cp.ws_base + "/v1/ws", additional_headers=headers)
    await ws.send('{"type": "session.update", "session": {}}')
    await asyncio.sleep(0.2)  # the gateway has it and waits for the upstream (0.6 s)
    ws.transport.abort()  # the client is gone while the gateway waits for the upstream

    await eventually(lambda: _gone(cp, "voice-agent-v1") == 1, timeout=5)
    # the upstream connection was closed before the first session.update: no upstream session
    assert await _upstream_sessions(emulator) == []
    assert cp.service.engine.live == {}
    # write-ahead: the connect entry was durable before the dial, so the record keeps the
    # attempt, ended: its connect never went upstream (`rejected`, saying why)
    ended = await cp.call("GET", "/v1/sessions?state=ended", expect=200)
    [session] = ended["items"]
    assert session["end_cause"] == "client_closed"
    entries = await cp.log(session["id"])
    assert [(e["cause"], e["version"], e["status"]) for e in entries] == [
        ("connect", 1, "sent"), ("connect", 1, "rejected")]  # fmt: skip
    assert entries[1]["error"] == "not connected: the client left during the upstream handshake"
