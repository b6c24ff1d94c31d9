"""The control channel's push frames as the app's socket receives them: built and written
by ``ControlTransport`` itself (no aiohttp ``send_str``), each WebSocket length form whole
(RFC 6455 §5.2: 7-bit, 16-bit and 64-bit payload lengths), the same text ``send_str`` would
have sent; a socket that negotiated permessage-deflate still gets its pushes (``send_str``)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import websockets
from aiohttp import web

from controlplane.app import SERVICE, build_app
from controlplane.config import Settings
from controlplane.edges.control_channel import ControlTransport
from controlplane.push.protocol import Push
from tests.integration.service.conftest import ADMIN, ControlPlaneUnderTest, _serve

AGENT = {"type": "register", "kind": "voice-agent-v1", "model": "voice-agent"}


async def _push(ws: websockets.ClientConnection) -> str:
    while True:
        raw = await asyncio.wait_for(ws.recv(), 5)
        assert isinstance(raw, str)
        if json.loads(raw)["type"] == "push":
            return raw


def _expected(session_id: str, version: int, message: dict[str, Any]) -> str:
    """What ``send_str`` sent before: the session's prefix, the version, the message text."""
    return (
        '{"type":"push","session_id":' + json.dumps(session_id)
        + f',"version":{version},"message":{json.dumps(message)}}}'
    )  # fmt: skip


@pytest.mark.parametrize(
    ("prompt", "length_form"),
    [("Hi.", 7), ("x" * 1000, 16), ("é" * 20_000, 64)],  # é: 6 bytes as JSON (\u00e9)
)
async def test_push_frames_of_every_length_arrive_whole_and_as_before(
    cp: ControlPlaneUnderTest, prompt: str, length_form: int
) -> None:
    url = cp.ws_base + "/v1/control"
    async with websockets.connect(
        url, additional_headers={"Authorization": f"Bearer {ADMIN}"}, compression=None,
        max_size=2**20,
    ) as ws:  # fmt: skip
        await ws.send(json.dumps({**AGENT, "session_id": "s"}))
        registered = json.loads(await ws.recv())
        assert registered["type"] == "registered"
        ls = cp.service.engine.live["s"]
        assert isinstance(ls.transport, ControlTransport)
        await cp.publish({"id": "p", "match": {"kind": ["voice-agent-v1"]},
                          "set": {"system_prompt": prompt}})  # fmt: skip
        raw = await _push(ws)
        message = {"type": "session.update", "session": {"system_prompt": prompt}}
        assert raw == _expected("s", ls.push.sent_version, message)
        size = len(raw.encode())
        assert {7: size < 126, 16: 126 <= size < 65536, 64: size >= 65536}[length_form]


@pytest.fixture
async def deflating_cp(
    cp_settings: Callable[..., Settings],
) -> AsyncIterator[ControlPlaneUnderTest]:
    settings = cp_settings(websocket_compression=True)
    app = build_app(settings)
    runner, port = await _serve(app)
    async with aiohttp.ClientSession() as http:
        yield ControlPlaneUnderTest(port, http, app[SERVICE], settings.data_dir)
    await runner.cleanup()


async def test_a_compressed_control_channel_still_gets_its_pushes(
    deflating_cp: ControlPlaneUnderTest,
) -> None:
    cp = deflating_cp
    async with websockets.connect(
        cp.ws_base + "/v1/control", additional_headers={"Authorization": f"Bearer {ADMIN}"},
        compression="deflate",
    ) as ws:  # fmt: skip
        assert ws.response is not None
        assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")
        await ws.send(json.dumps({**AGENT, "session_id": "z"}))
        assert json.loads(await ws.recv())["type"] == "registered"
        await cp.publish({"id": "p", "match": {"kind": ["voice-agent-v1"]},
                          "set": {"system_prompt": "Hello " * 50}})  # fmt: skip
        raw = await _push(ws)
        ls = cp.service.engine.live["z"]
        message = {"type": "session.update", "session": {"system_prompt": "Hello " * 50}}
        assert raw == _expected("z", ls.push.sent_version, message)


async def test_frames_to_an_app_that_stops_reading_wait_for_the_socket_to_drain() -> None:
    """aiohttp's flow control kept: with the app not reading, writes stop once the socket's
    buffers are full (the writer paused) instead of queueing without bound; they resume
    when the app reads, and every frame arrives whole and in order."""
    ready: asyncio.Queue[ControlTransport] = asyncio.Queue()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None:  # a small kernel buffer: the writer pauses after little data
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
        await ready.put(ControlTransport(ws, "slow", request))
        async for _ in ws:  # until the app closes
            pass
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner, port = await _serve(app)
    text = json.dumps({"type": "session.update", "session": {"system_prompt": "x" * 2000}})
    try:
        async with websockets.connect(f"ws://127.0.0.1:{port}/", compression=None) as client:
            client.transport.pause_reading()  # the app stops reading its socket
            transport = await asyncio.wait_for(ready.get(), 5)
            frames = 1_000  # ~2 MB: far past the buffers on the way

            async def write_all() -> None:
                for version in range(1, frames + 1):
                    await transport.write(_a_push(version), {}, text)

            writing = asyncio.create_task(write_all())
            await asyncio.sleep(0.5)
            assert not writing.done()  # waiting for the app's socket to drain
            client.transport.resume_reading()
            versions = []
            while len(versions) < frames:
                raw = await asyncio.wait_for(client.recv(), 10)
                assert isinstance(raw, str)
                frame = json.loads(raw)
                assert frame["message"]["session"]["system_prompt"] == "x" * 2000
                versions.append(frame["version"])
            await asyncio.wait_for(writing, 10)
            assert versions == list(range(1, frames + 1))
    finally:
        await runner.cleanup()


def _a_push(version: int) -> Push:
    return Push(version=version, delta={}, config={}, refs=(), cause="policy", superseded=(),
                event_at=None, owners={})  # fmt: skip
