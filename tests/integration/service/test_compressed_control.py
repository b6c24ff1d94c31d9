"""A control channel that negotiated permessage-deflate, through real sockets.

1. One compressed app that stops reading holds up no other session's push: a fan-out's
   inline write to it never waits for it to read (was: aiohttp's ``send_str`` wrote the
   compressed frame, THEN waited for the drain with no timeout once the transport paused
   past its writer limit, and every later session of the fan-out waited for that app).
2. Its pushes end in one recorded state each that tells the truth, checked against what the
   app received once it reads again: a push written to it ends ``unverified`` (in doubt,
   never answered) and did reach it; one ``rejected`` "not sent" never reached it.
3. The frames compressed by ``ControlTransport`` keep the negotiated deflate context: pushes,
   answers and the welcome decode in order with context takeover, with
   ``server_no_context_takeover`` and with a smaller server window.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import websockets
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from controlplane.config import Settings
from controlplane.edges.control_transport import ControlTransport
from tests.integration.service.conftest import ADMIN, ControlPlaneUnderTest, eventually, serving

NORMAL = 5
ROUNDS = 8
PROMPT_WAIT_S = 5.0  # "normal time" for a reading app to get a push (the machine is shared)


@pytest.fixture
async def deflating(cp_settings: Callable[..., Settings]) -> AsyncIterator[ControlPlaneUnderTest]:
    settings = cp_settings(websocket_compression=True, ack_timeout_s=2.0, send_timeout_s=1.0)
    async with serving(settings) as cp:
        yield cp


def _noise(rng: random.Random, n: int) -> str:
    """``n`` random astral characters: a prompt deflate cannot shrink much."""
    return "".join(chr(rng.randint(0x10000, 0x10FFFF)) for _ in range(n))


async def _connect(cp: ControlPlaneUnderTest, sid: str, **deflate: Any) -> Any:
    ws = await websockets.connect(
        cp.ws_base + "/v1/control", additional_headers={"Authorization": f"Bearer {ADMIN}"},
        extensions=[ClientPerMessageDeflateFactory(**deflate)], compression=None,
        max_size=None,
    )  # fmt: skip
    assert ws.response is not None
    assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")
    await ws.send(json.dumps({"type": "register", "kind": "voice-agent-v1",
                              "model": "voice-agent", "session_id": sid}))  # fmt: skip
    assert json.loads(await ws.recv())["type"] == "registered"
    return ws


async def _answering(ws: Any, got: dict[int, float]) -> None:
    """A normal app: reads every frame, answers every push (``applied``)."""
    async for raw in ws:
        msg = json.loads(raw)
        if msg["type"] == "push":
            got[msg["version"]] = time.monotonic()
            await ws.send(json.dumps({"type": "applied", "version": msg["version"]}))


def _ends(log: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """The policy pushes' terminal entries by version (every version that has a ``sent``)."""
    sent = {e["version"] for e in log if e["status"] == "sent" and e["cause"] == "policy"}
    ends: dict[int, list[dict[str, Any]]] = {v: [] for v in sent}
    for e in log:
        if e["version"] in ends and e["status"] != "sent":
            ends[e["version"]].append(e)
    return ends


@pytest.mark.timeout(90)
async def test_a_compressed_app_that_stops_reading_holds_up_no_other_sessions_push(
    deflating: ControlPlaneUnderTest,
) -> None:
    cp, rng = deflating, random.Random(12)
    stalled = await _connect(cp, "stalled")  # registered first: first in the fan-out
    apps = [await _connect(cp, f"n{i}") for i in range(NORMAL)]
    got: list[dict[int, float]] = [{} for _ in apps]
    readers = [asyncio.create_task(_answering(ws, g)) for ws, g in zip(apps, got, strict=True)]
    try:
        ls = cp.service.engine.live["stalled"]
        assert isinstance(ls.transport, ControlTransport)
        server = ls.transport.ws._writer.transport  # (its socket: small kernel buffers)
        server.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        stalled.transport.pause_reading()  # the app stops reading
        stalled.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 16384
        )
        for _ in range(ROUNDS):  # ~100 KB compressed per push: the stalled socket fills
            doc = {"id": "p", "match": {"kind": ["voice-agent-v1"]}, "set": {
                "system_prompt": _noise(rng, 20_000),
                "keyterms": [_noise(rng, 50) for _ in range(100)]}}  # fmt: skip
            started = time.monotonic()
            await asyncio.wait_for(cp.publish(doc), PROMPT_WAIT_S)
            version = cp.service.engine.live["n0"].push.desired_version
            await eventually(_all_got(got, version), timeout=PROMPT_WAIT_S)
            late = [i for i, g in enumerate(got) if g[version] - started >= PROMPT_WAIT_S]
            assert not late, (late, version)
            push = ls.push.in_flight
            if push is not None and not ls.push.waiting:  # written: answered blindly (unread)
                await stalled.send(json.dumps({"type": "applied", "version": push.version}))
                await eventually(_answered(ls, push))
        assert server.get_write_buffer_size() > 0  # the stalled app really holds bytes back
        # the stalled session: every push it was sent ends once (written: no answer within
        # ack_timeout_s; held by its worker past send_timeout_s: never written)
        await eventually(lambda: _settled(cp), timeout=15)
        log = await cp.log("stalled")
        before = _ends(log)
        assert len(before) >= 2, log
        for version, ends in before.items():
            assert len(ends) == 1, (version, ends)  # ONE terminal entry
        written = {v for v, e in before.items() if e[0]["status"] in ("acked", "unverified")}
        refused = {v for v, e in before.items() if e[0]["status"] == "rejected"}
        assert written and refused and written | refused == set(before), before
        for v in refused:
            assert "send timed out" in before[v][0]["error"], before[v]
        # ground truth: the app reads again; what reached it
        stalled.transport.resume_reading()
        received: set[int] = set()
        while not written <= received:
            msg = json.loads(await asyncio.wait_for(stalled.recv(), 10))
            if msg["type"] == "push":
                received.add(msg["version"])
        assert not (received & refused), (received, refused)  # "not sent" never reached it
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for ws in [stalled, *apps]:
            stalled.transport.abort() if ws is stalled else await ws.close()


def _all_got(got: list[dict[int, float]], version: int) -> Callable[[], bool]:
    return lambda: all(version in g for g in got)


def _answered(ls: Any, push: Any) -> Callable[[], bool]:
    return lambda: ls.push.in_flight is not push


async def _settled(cp: ControlPlaneUnderTest) -> bool:
    ends = _ends(await cp.log("stalled"))
    return bool(ends) and all(ends.values())


@pytest.mark.parametrize(
    "deflate",
    [{}, {"server_no_context_takeover": True}, {"server_max_window_bits": 10}],
    ids=["takeover", "server_no_context_takeover", "server_max_window_bits_10"],
)
async def test_compressed_frames_keep_the_negotiated_context(
    deflating: ControlPlaneUnderTest, deflate: dict[str, Any]
) -> None:
    """Pushes and answers interleaved, each similar to the last (back-references across
    messages under takeover): the app's decompressor, set as negotiated, decodes them all."""
    cp = deflating
    ws = await _connect(cp, "z", **deflate)
    try:
        ls = cp.service.engine.live["z"]
        assert isinstance(ls.transport, ControlTransport) and ls.transport.unsent is not None
        for n in range(1, 6):
            prompt = "You are a helpful assistant. " * (20 * n)
            await cp.publish({"id": "p", "match": {"kind": ["voice-agent-v1"]},
                              "set": {"system_prompt": prompt}})  # fmt: skip
            push = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert push["type"] == "push" and push["session_id"] == "z", push
            assert push["message"]["session"]["system_prompt"] == prompt
            await ws.send(json.dumps({"type": "heartbeat"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "heartbeat"
            await ws.send(json.dumps({"type": "applied", "version": push["version"]}))
            await eventually(lambda: ls.push.in_flight is None)
        assert [e["status"] for e in await cp.log("z") if e["status"] == "acked"] == ["acked"] * 5
    finally:
        await ws.close()
