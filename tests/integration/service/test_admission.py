"""Issue 19 item 5: first-message deadline, per-replica connection cap and client-update rate
limit on /v3/ws, /v1/ws and /v1/control (real server, real emulator, real sockets)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from controlplane.app import SERVICE, build_app
from controlplane.cli.http import ControlPlaneClient
from controlplane.config import Settings
from tests.integration.service.audio import silence_chunk
from tests.integration.service.conftest import ADMIN, ControlPlaneUnderTest, _serve, eventually

CONNECT = "/v3/ws?sample_rate=16000&speech_model=universal-3-5-pro"
AUTH = {"Authorization": "Bearer test-key"}
STREAM_AUTH = {"Authorization": "test-key"}  # Streaming v3 takes the raw key
CONTROL_AUTH = {"Authorization": f"Bearer {ADMIN}"}


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[ControlPlaneUnderTest]:
    app = build_app(settings)
    runner, port = await _serve(app)
    try:
        async with aiohttp.ClientSession() as http:
            yield ControlPlaneUnderTest(port, http, app[SERVICE], settings.data_dir)
    finally:
        await runner.cleanup()


async def _recv_type(ws: Any, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if msg.get("type") == kind:
            return dict(msg)


async def _closed(ws: Any, timeout: float = 5.0) -> tuple[int | None, list[Any]]:
    """Frames received until the server closed the socket, and its close code."""
    frames: list[Any] = []
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            raw = await asyncio.wait_for(ws.recv(), timeout)
            frames.append(json.loads(raw) if isinstance(raw, str) else raw)
    return ws.close_code, frames


async def test_silent_sockets_are_closed_after_the_first_message_timeout(
    cp_settings: Callable[..., Settings],
) -> None:
    async with running(cp_settings(first_message_timeout_s=0.6)) as cp:
        loop = asyncio.get_running_loop()
        async with (
            websockets.connect(cp.ws_base + "/v1/ws", additional_headers=AUTH) as agent,
            websockets.connect(
                cp.ws_base + "/v1/control", additional_headers=CONTROL_AUTH
            ) as control,
            websockets.connect(cp.ws_base + CONNECT, additional_headers=STREAM_AUTH) as streaming,
            websockets.connect(cp.ws_base + CONNECT, additional_headers=STREAM_AUTH) as talker,
        ):
            start = loop.time()
            await talker.send(silence_chunk())  # audio first: a legitimate streaming start
            code, frames = await _closed(agent)
            assert code == 1008
            assert frames[-1]["type"] == "session.error" and frames[-1]["code"] == "timeout"
            code, frames = await _closed(control)
            assert code == 1008
            assert frames == [{"type": "error", "code": "register_timeout",
                               "message": "no register message within 0.6s"}]  # fmt: skip
            code, frames = await _closed(streaming)
            assert code == 3006
            assert frames[0]["type"] == "Begin"  # the upstream session was open meanwhile
            assert frames[-1]["type"] == "Error" and "Inactivity" in frames[-1]["error"]
            assert 0.5 < loop.time() - start < 3.0
            # the one that sent audio first is still served well past the deadline
            await asyncio.sleep(0.8)
            await talker.send(silence_chunk())
            assert (await _recv_type(talker, "Begin"))["type"] == "Begin"
            assert len(cp.service.engine.live) == 1
        ended = await cp.call("GET", "/v1/sessions?state=ended", expect=200)
        assert len(ended["items"]) >= 1


async def test_connection_cap_refuses_with_503_before_the_upgrade(
    cp_settings: Callable[..., Settings],
) -> None:
    async with running(cp_settings(max_connections=2, first_message_timeout_s=30)) as cp:
        async with (
            websockets.connect(cp.ws_base + "/v1/ws", additional_headers=AUTH),
            websockets.connect(
                cp.ws_base + "/v1/control", additional_headers=CONTROL_AUTH
            ) as control,
        ):
            for path, headers in (("/v1/ws", AUTH), ("/v1/control", CONTROL_AUTH),
                                  (CONNECT, STREAM_AUTH)):  # fmt: skip
                with pytest.raises(InvalidStatus) as refused:
                    await websockets.connect(cp.ws_base + path, additional_headers=headers)
                response = refused.value.response
                assert response.status_code == 503
                assert response.headers["Retry-After"] == "1"
                body = json.loads(response.body or b"{}")
                assert body["error"]["code"] == "too_many_connections"
                assert body["error"]["details"] == {"limit": 2}
            assert cp.service.engine.live == {}  # nothing registered for refused sockets
            await control.close()
            await eventually(lambda: cp.service.engine.live == {})  # slot freed on close
            async with websockets.connect(
                cp.ws_base + "/v1/control", additional_headers=CONTROL_AUTH
            ) as again:
                await again.send(json.dumps({"type": "register", "kind": "voice-agent-v1",
                                             "model": "voice-agent"}))  # fmt: skip
                assert (await _recv_type(again, "registered"))["version"] >= 1


async def test_agent_updates_over_the_rate_are_refused_and_not_logged(
    cp_settings: Callable[..., Settings],
) -> None:
    settings = cp_settings(client_update_burst=3, client_update_rate_per_s=0.01)
    async with (
        running(settings) as cp,
        websockets.connect(cp.ws_base + "/v1/ws", additional_headers=AUTH) as ws,
    ):
        await ws.send(json.dumps({"type": "session.update", "session": {"system_prompt": "A"}}))
        ready = await _recv_type(ws, "session.ready")
        sid = cp.live_by_upstream(ready["session_id"])
        for i in range(40):
            await ws.send(json.dumps(
                {"type": "session.update", "session": {"system_prompt": f"p{i}"}}
            ))  # fmt: skip
        refused = [await _recv_type(ws, "session.error") for _ in range(37)]
        assert {r["code"] for r in refused} == {"rate_limited"}
        assert "at most 3 at once" in refused[0]["message"]
        entries = await cp.log(sid)
        assert len([e for e in entries if e["cause"] == "client"]) == 3
        await ws.send(json.dumps({"type": "session.update", "session": {"output": {}}}))
        assert (await _recv_type(ws, "session.error"))["code"] == "rate_limited"  # still open
        assert not ws.close_code


async def test_streaming_updates_over_the_rate_close_4429(
    cp_settings: Callable[..., Settings],
) -> None:
    settings = cp_settings(client_update_burst=2, client_update_rate_per_s=0.01)
    async with (
        running(settings) as cp,
        websockets.connect(cp.ws_base + CONNECT, additional_headers=STREAM_AUTH) as ws,
    ):
        begin = await _recv_type(ws, "Begin")
        sid = cp.live_by_upstream(begin["id"])
        await ws.send(json.dumps({"type": "KeepAlive"}))  # not an update: never counted
        for silence in (500, 600, 700):
            await ws.send(json.dumps({"type": "UpdateConfiguration",
                                      "min_turn_silence": silence}))  # fmt: skip
        code, frames = await _closed(ws)
        assert code == 4429
        assert frames[-1]["type"] == "Error" and frames[-1]["error_code"] == 4429
        entries = await cp.log(sid)
        client = [e for e in entries if e["cause"] == "client"]
        assert [e["delta"] for e in client] == [{"min_turn_silence_ms": 500},
                                                {"min_turn_silence_ms": 600}]  # fmt: skip


async def test_control_updates_over_the_rate_get_an_error_and_the_socket_stays(
    cp_settings: Callable[..., Settings],
) -> None:
    settings = cp_settings(client_update_burst=2, client_update_rate_per_s=0.01)
    async with (
        running(settings) as cp,
        websockets.connect(cp.ws_base + "/v1/control", additional_headers=CONTROL_AUTH) as ws,
    ):
        await ws.send(json.dumps({"type": "register", "kind": "voice-agent-v1",
                                  "model": "voice-agent"}))  # fmt: skip
        sid = (await _recv_type(ws, "registered"))["session_id"]
        for n in range(5):
            await ws.send(json.dumps({"type": "update", "config": {"vad_threshold": n / 10}}))
        results = [await _recv_type(ws, "update_result") for _ in range(2)]
        assert [r["accepted"] for r in results] == [["vad_threshold"]] * 2
        errors = [await _recv_type(ws, "error") for _ in range(3)]
        assert {e["code"] for e in errors} == {"rate_limited"}
        await ws.send(json.dumps({"type": "heartbeat"}))
        assert (await _recv_type(ws, "heartbeat"))["type"] == "heartbeat"
        entries = await cp.log(sid)
        assert len([e for e in entries if e["cause"] == "client"]) == 2


async def test_session_log_is_paginated_and_the_cli_client_follows_pages(
    cp: ControlPlaneUnderTest,
) -> None:
    async with websockets.connect(
        cp.ws_base + "/v1/control", additional_headers=CONTROL_AUTH
    ) as ws:
        await ws.send(json.dumps({"type": "register", "kind": "voice-agent-v1",
                                  "model": "voice-agent"}))  # fmt: skip
        sid = (await _recv_type(ws, "registered"))["session_id"]
        for n in range(6):
            await ws.send(json.dumps({"type": "update", "config": {"vad_threshold": n / 10}}))
            await _recv_type(ws, "update_result")
    everything = await cp.log(sid)
    assert len(everything) >= 7
    seen: list[dict[str, Any]] = []
    query = "?limit=3"
    pages = 0
    while True:
        body = await cp.call("GET", f"/v1/sessions/{sid}/log{query}", expect=200)
        assert set(body) == {"items", "next"}
        assert len(body["items"]) <= 3
        seen.extend(body["items"])
        pages += 1
        if body["next"] is None:
            break
        query = f"?limit=3&cursor={body['next']}"
    assert seen == everything
    assert pages == -(-len(everything) // 3)
    assert [e["seq"] for e in seen] == sorted(e["seq"] for e in seen)
    for bad in ("?cursor=seq-x", "?cursor=1", "?limit=0", "?limit=%EF%BC%91", "?limit=1001",
                "?after=3"):  # fmt: skip
        refused = await cp.call("GET", f"/v1/sessions/{sid}/log{bad}", expect=400)
        assert refused["error"]["code"] == "bad_request", bad
    client = ControlPlaneClient(cp.base, token=ADMIN)
    assert await asyncio.to_thread(client.session_log, sid, page=2) == everything


async def test_control_registration_labels_are_capped_like_the_gateway(
    cp: ControlPlaneUnderTest,
) -> None:
    async with websockets.connect(
        cp.ws_base + "/v1/control", additional_headers=CONTROL_AUTH
    ) as ws:
        labels = {f"k{i}": "v" for i in range(33)}
        await ws.send(json.dumps({"type": "register", "kind": "voice-agent-v1",
                                  "model": "voice-agent", "labels": labels}))  # fmt: skip
        code, frames = await _closed(ws)
    assert code == 1008
    assert frames == [{"type": "error", "code": "bad_labels", "message": "33 labels, limit is 32"}]
    assert cp.service.engine.live == {}
