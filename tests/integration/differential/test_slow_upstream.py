"""A gateway upstream that stops reading mid-push, through real sockets (docs/audit.md,
"Writes given up"; the emulator's ``stop_reading`` fault: its kernel buffers fill, the
gateway's writes to it stay buffered).

1. One stalled upstream holds up no other session's push: a fan-out's inline write to its
   leg never waits for the upstream to read (was: aiohttp's ``send_str`` wrote the frame,
   then waited for the drain with no timeout, the transport being paused and the writer past
   its 256 KiB limit, so every later session of the fan-out waited for that upstream).
2. Its push ends in one recorded state that tells the truth: the frame was handed to the
   socket, so ``unverified`` (in doubt) until the upstream reads it and answers (recorded
   late); a connection cut while the frame waits in the buffers is in doubt too (the bytes
   may have left), never ``rejected`` "write failed" (was).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
from aiohttp import web

from controlplane.config import Settings
from controlplane.edges.control_transport import ControlTransport
from controlplane.edges.gateway import UpstreamTransport
from controlplane.push.live import CONGESTED_BYTES
from emulator.server import STATE
from emulator.server import build_app as build_emulator
from emulator.settings import EmulatorSettings
from tests.integration.service.conftest import (
    ADMIN,
    TOKENS,
    ControlPlaneUnderTest,
    Emulator,
    _serve,
    eventually,
    serving,
)
from tests.integration.service.fleet import Agent, Fleet

ACK_TIMEOUT_S = 1.5
# a push frame over aiohttp's 256 KiB writer limit (an astral character is 12 bytes of JSON):
# with the leg paused, send_str wrote it and then waited for the upstream to read
BIG = "\U0001f600" * 19_990
TERMS = [f"{i:02d}" + "\U0001f600" * 48 for i in range(100)]
FILLER = json.dumps({"type": "input.audio", "audio": "!" + "A" * 16_000})  # invalid_audio


@dataclass
class Stalling:
    cp: ControlPlaneUnderTest
    emulator: Emulator
    app: web.Application  # the emulator's (its live sockets: a connection cut)


@pytest.fixture
async def stalling(tmp_path: Path) -> AsyncIterator[Stalling]:
    """A control plane on an emulator whose sockets have a small kernel receive buffer (set
    on the listening socket, inherited by the accepted ones: a stalled upstream's window, not
    megabytes of loopback autotuning)."""
    app = build_emulator(EmulatorSettings(pacing_tolerance_ms=5e3))
    em_runner, em_port = await _serve(app)
    for site in em_runner.sites:
        server = site._server  # type: ignore[attr-defined]
        for sock in server.sockets:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    settings = Settings(
        listen="127.0.0.1:0", data_dir=tmp_path / "data", node_id="node-a", tokens=TOKENS,
        upstream_streaming_url=f"ws://127.0.0.1:{em_port}/v3/ws",
        upstream_agent_url=f"ws://127.0.0.1:{em_port}/v1/ws",
        ack_timeout_s=ACK_TIMEOUT_S, send_timeout_s=1.0, shutdown_grace_s=0.5,
    )  # fmt: skip
    try:
        async with serving(settings) as cp, aiohttp.ClientSession() as http:
            yield Stalling(cp, Emulator(em_port, http), app)
    finally:
        await em_runner.cleanup()


def _leg(cp: ControlPlaneUnderTest, sid: str) -> tuple[Any, Any]:
    """The gateway's upstream leg of ``sid``: its asyncio transport and aiohttp protocol."""
    transport = cp.service.engine.live[sid].transport
    assert isinstance(transport, UpstreamTransport) and transport.ws is not None
    writer = transport.ws._writer
    return writer.transport, writer.protocol


async def _stall(stalling: Stalling, agent: Agent, sid: str) -> Any:
    """The agent's upstream stops reading; its client sends frames the gateway relays until
    the leg's transport is paused (its unsent bytes past asyncio's high-water mark) yet not
    congested (a fan-out still writes to it inline). The leg's transport."""
    transport, protocol = _leg(stalling.cp, sid)
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
    await stalling.emulator.faults(agent.upstream_id, {"stop_reading": True})
    for _ in range(400):  # bounded: 16 KiB frames until the leg is paused
        if protocol.writing_paused:
            break
        await agent.ws.send(FILLER)
        await asyncio.sleep(0.01)
    assert protocol.writing_paused, transport.get_write_buffer_size()
    assert transport.get_write_buffer_size() < CONGESTED_BYTES  # (inline, not a worker's)
    return transport


async def _drain_client(agent: Agent) -> None:
    with contextlib.suppress(websockets.ConnectionClosed):
        async for _ in agent.ws:
            pass


async def _entries(cp: ControlPlaneUnderTest, sid: str, version: int) -> list[dict[str, Any]]:
    return [e for e in await cp.log(sid) if e["version"] == version and e["cause"] == "policy"]


async def _runs(emulator: Emulator, upstream_id: str, prompt: str) -> bool:
    config = (await emulator.session(upstream_id))["config"]
    return bool(config.get("system_prompt") == prompt)


@pytest.mark.timeout(60)
async def test_an_upstream_that_stops_reading_holds_up_no_other_sessions_push(
    stalling: Stalling,
) -> None:
    cp, emulator = stalling.cp, stalling.emulator
    fleet = Fleet(cp.ws_base)
    readers: list[asyncio.Task[Any]] = []
    try:
        stalled = await fleet.agent("team=fan")  # first: the fan-out writes to it first
        others = [await fleet.agent("team=fan") for _ in range(3)]
        readers = [asyncio.create_task(_drain_client(a)) for a in (stalled, *others)]
        sid = cp.live_by_upstream(stalled.upstream_id)
        await _stall(stalling, stalled, sid)
        prompt = f"fan {BIG}"
        publishing = asyncio.create_task(cp.publish({"id": "fan", "match": {"labels": {
            "team": ["fan"]}}, "set": {"system_prompt": prompt, "keyterms": TERMS}}))  # fmt: skip
        readers.append(publishing)
        for other in others:  # while the stalled upstream still reads nothing
            await eventually(lambda o=other: _runs(emulator, o.upstream_id, prompt), timeout=5)
            osid = cp.live_by_upstream(other.upstream_id)
            await eventually(lambda s=osid: _acked(cp, s, prompt), timeout=5)
        await asyncio.wait_for(publishing, 5)  # (its fan-out waited for no one)
        version = cp.service.engine.live[sid].push.desired_version
        assert not await _runs(emulator, stalled.upstream_id, prompt)
        # the stalled session's push: handed to the socket, no answer in time: in doubt
        await eventually(lambda: _statuses(cp, sid, version, 2), timeout=ACK_TIMEOUT_S + 5)
        [sent, doubt] = await _entries(cp, sid, version)
        assert (sent["status"], doubt["status"]) == ("sent", "unverified"), doubt
        assert (await cp.session(sid))["running_config"].get("system_prompt") != prompt
        # the next push finds the leg congested (that frame is still in it): the session's
        # worker waits BEFORE writing, gives up after send_timeout_s: nothing went, rejected
        nxt = f"next {BIG}"
        await cp.publish({"id": "fan", "match": {"labels": {"team": ["fan"]}},
                          "set": {"system_prompt": nxt, "keyterms": TERMS}})  # fmt: skip
        given_up = cp.service.engine.live[sid].push.desired_version
        await eventually(lambda: _statuses(cp, sid, given_up, 2), timeout=5)
        ended = (await _entries(cp, sid, given_up))[1]
        assert (ended["status"], ended["error"]) == ("rejected", "send timed out"), ended
        # it reads again: it runs the first push, whose answer is recorded late (never
        # re-sent), then gets the one it missed as a new version (owed), once
        await emulator.faults(stalled.upstream_id, {"stop_reading": False})
        await eventually(lambda: _runs(emulator, stalled.upstream_id, nxt), timeout=20)
        mine = await _entries(cp, sid, version)
        assert [e["status"] for e in mine] == ["sent", "unverified", "acked"], mine
        assert mine[2]["error"].startswith("answered after"), mine[2]
        await eventually(lambda: _settled(cp, sid, nxt), timeout=10)
        went = [
            m["session"].get("system_prompt")
            for m in await emulator.updates(stalled.upstream_id, "session.update")
        ]
        assert (went.count(prompt), went.count(nxt)) == (1, 1), went
    finally:
        for task in readers:  # (and the publish, had it hung)
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await fleet.close()


@pytest.mark.timeout(60)
async def test_a_connection_cut_while_a_handed_frame_waits_is_in_doubt_not_rejected(
    stalling: Stalling,
) -> None:
    cp, emulator = stalling.cp, stalling.emulator
    fleet = Fleet(cp.ws_base)
    tasks: list[asyncio.Task[Any]] = []
    try:
        agent = await fleet.agent("team=cut")
        tasks.append(asyncio.create_task(_drain_client(agent)))
        sid = cp.live_by_upstream(agent.upstream_id)
        leg = await _stall(stalling, agent, sid)
        prompt = f"cut {BIG}"
        publishing = asyncio.create_task(cp.publish({"id": "cut", "match": {"labels": {
            "team": ["cut"]}}, "set": {"system_prompt": prompt, "keyterms": TERMS}}))  # fmt: skip
        tasks.append(publishing)
        ls = cp.service.engine.live[sid]
        await eventually(lambda: ls.push.in_flight is not None and not ls.push.waiting)
        version = ls.push.desired_version
        assert leg.get_write_buffer_size() > 0  # (its bytes wait in the buffers)
        stalling.app[STATE].live[agent.upstream_id].request.transport.abort()  # cut
        await eventually(lambda: sid not in cp.service.engine.live, timeout=10)
        await asyncio.wait_for(publishing, 5)
        await eventually(lambda: _statuses(cp, sid, version, 2), timeout=5)
        [sent, end] = await _entries(cp, sid, version)
        # the bytes may have left before the cut: in doubt, never "rejected: write failed"
        assert (sent["status"], end["status"]) == ("sent", "unverified"), end
        assert "ended before the upstream answered" in end["error"], end
        shown = await cp.session(sid)
        assert shown["running_config"].get("system_prompt") != prompt  # (never claimed)
        assert not await _runs(emulator, agent.upstream_id, prompt)  # (it read nothing)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await fleet.close()


async def _acked(cp: ControlPlaneUnderTest, sid: str, prompt: str) -> bool:
    return any(e["status"] == "acked" and e["cause"] == "policy" for e in await cp.log(sid))


async def _settled(cp: ControlPlaneUnderTest, sid: str, prompt: str) -> bool:
    shown = await cp.session(sid)
    return bool(shown["state"] == "synced" and shown["running_config"]["system_prompt"] == prompt)


async def _statuses(cp: ControlPlaneUnderTest, sid: str, version: int, n: int) -> bool:
    return len(await _entries(cp, sid, version)) >= n


@pytest.fixture
async def deflating(cp_settings: Callable[..., Settings]) -> AsyncIterator[ControlPlaneUnderTest]:
    """A control plane whose control channels negotiate permessage-deflate: their push frames
    are compressed by ``ControlTransport`` and written whole, never waiting after the write
    (was aiohttp's ``send_str``, which wrote a frame, THEN could wait for the drain)."""
    async with serving(cp_settings(websocket_compression=True, ack_timeout_s=30.0)) as cp:
        yield cp


def _noise(rng: random.Random, n: int) -> str:
    """``n`` random astral characters: a prompt deflate cannot shrink much."""
    return "".join(chr(rng.randint(0x10000, 0x10FFFF)) for _ in range(n))


@pytest.mark.timeout(60)
async def test_a_compressed_control_channel_cut_while_its_push_drains_is_in_doubt(
    deflating: ControlPlaneUnderTest,
) -> None:
    """A compressed control channel's app stops reading; its pushes (acknowledged blindly)
    fill the socket; no publish waits for it (was: ``send_str`` handed one over and waited
    for the drain, the publish with it); the connection is cut while a written push's bytes
    wait in the buffers. They may have reached the app: the push is in doubt
    (``unverified``), never ``rejected`` "write failed" (was)."""
    cp, rng = deflating, random.Random(5)
    publishing: asyncio.Task[Any] | None = None
    async with websockets.connect(
        cp.ws_base + "/v1/control", additional_headers={"Authorization": f"Bearer {ADMIN}"},
        compression="deflate", max_size=None,
    ) as ws:  # fmt: skip
        try:
            await ws.send(json.dumps({"type": "register", "kind": "voice-agent-v1",
                                      "model": "voice-agent", "session_id": "z"}))  # fmt: skip
            assert json.loads(await ws.recv())["type"] == "registered"
            ls = cp.service.engine.live["z"]
            assert isinstance(ls.transport, ControlTransport) and ls.transport.unsent is not None
            server = ls.transport.ws._writer.transport
            server.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024
            )
            ws.transport.pause_reading()  # the app stops reading
            ws.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024
            )
            for _ in range(8):  # bounded: acknowledged blindly until a write waits
                doc = {"id": "z", "match": {"kind": ["voice-agent-v1"]}, "set": {
                    "system_prompt": _noise(rng, 20_000),
                    "keyterms": [_noise(rng, 50) for _ in range(100)]}}  # fmt: skip
                publishing = asyncio.create_task(cp.publish(doc))
                await asyncio.wait_for(publishing, 5)  # never waits for the app (deflate)
                await eventually(lambda: ls.push.in_flight is not None and not ls.push.waiting)
                push = ls.push.in_flight
                assert push is not None
                if server.get_write_buffer_size() > 0:  # written, its bytes wait unread
                    break
                await ws.send(json.dumps({"type": "applied", "version": push.version}))
                await eventually(lambda: ls.push.in_flight is None)
            assert ls.push.in_flight is push and server.get_write_buffer_size() > 0
            ws.transport.abort()  # the connection is cut
            await eventually(lambda: "z" not in cp.service.engine.live, timeout=10)
            await eventually(lambda: _statuses(cp, "z", push.version, 2), timeout=5)
            ends = [e for e in await _entries(cp, "z", push.version) if e["status"] != "sent"]
            assert [e["status"] for e in ends] == ["unverified"], ends  # one, in doubt
        finally:
            if publishing is not None:
                publishing.cancel()
                await asyncio.gather(publishing, return_exceptions=True)
