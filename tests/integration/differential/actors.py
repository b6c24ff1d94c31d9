"""The differential test's clients, over real sockets.

- ``GatewayStreaming`` / ``GatewayAgent``: an app talking to the gateway as it would to
  AssemblyAI (``/v3/ws``, ``/v1/ws``); every frame it receives is kept.
- ``ControlApp``: an app that keeps its own upstream socket to the emulator and takes its
  orders from the control channel (``/v1/control``), as docs/control-channel.md describes:
  it forwards each push upstream, reports ``applied`` / ``failed`` from the upstream's answer
  (voice agent) or ``applied`` once written (streaming v3 has no answer), and asks the control
  plane first before sending its own updates (only accepted fields go upstream).

Each actor answers ``busy``: it still waits for something it sent (quiescence needs none).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from policies.fields import Delta
from sessions.dialects.streaming_v3 import STREAMING_V3
from sessions.dialects.voice_agent_v1 import VOICE_AGENT_V1

__all__ = ["Actor", "ControlApp", "GatewayAgent", "GatewayStreaming"]

STREAMING_KEY = {"Authorization": "test-key"}
AGENT_KEY = {"Authorization": "Bearer test-key"}
ANSWER_TIMEOUT_S = 5.0
SILENCE_50MS = bytes(1600)  # 50 ms of 16 kHz pcm_s16le


@dataclass
class Actor:
    name: str  # stable within a seed: s0, a1, cs2 ...
    kind: str  # streaming-v3 | voice-agent-v1
    model: str
    via: str  # "gateway" | "control"
    ws: ClientConnection | None = None
    upstream_id: str = ""  # the emulator's id
    session_id: str = ""  # the control plane's id
    received: list[dict[str, Any]] = field(default_factory=list)
    sent_updates: int = 0  # the client's own update messages
    reader: asyncio.Task[None] | None = None

    @property
    def busy(self) -> bool:
        return False

    @property
    def answered(self) -> bool:
        """Every message of the client that the upstream answers has had an answer."""
        return True

    async def _read(self, ws: ClientConnection, sink: list[dict[str, Any]]) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                if isinstance(raw, str):
                    sink.append(json.loads(raw))

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader


@dataclass
class GatewayStreaming(Actor):
    async def open(self, ws_base: str, labels: str) -> None:
        url = f"{ws_base}/v3/ws?sample_rate=16000&speech_model={self.model}"
        self.ws = await websockets.connect(
            url, additional_headers=STREAMING_KEY | {"X-Session-Labels": labels}
        )
        begin = json.loads(await asyncio.wait_for(self.ws.recv(), ANSWER_TIMEOUT_S))
        assert begin["type"] == "Begin", begin
        self.upstream_id = str(begin["id"])
        self.reader = asyncio.get_running_loop().create_task(self._read(self.ws, self.received))
        await self.ws.send(
            SILENCE_50MS
        )  # a live stream sends audio (the gateway times out idle ones)

    async def update(self, body: dict[str, Any]) -> None:
        assert self.ws is not None
        self.sent_updates += 1
        await self.ws.send(json.dumps({"type": "UpdateConfiguration", **body}))


@dataclass
class GatewayAgent(Actor):
    async def open(self, ws_base: str, labels: str) -> None:
        self.ws = await websockets.connect(
            ws_base + "/v1/ws", additional_headers=AGENT_KEY | {"X-Session-Labels": labels}
        )
        await self.ws.send(json.dumps({"type": "session.update", "session": {}}))
        ready = json.loads(await asyncio.wait_for(self.ws.recv(), ANSWER_TIMEOUT_S))
        assert ready["type"] == "session.ready", ready
        self.upstream_id = str(ready["session_id"])
        self.reader = asyncio.get_running_loop().create_task(self._read(self.ws, self.received))

    async def open_resume(self, ws_base: str, upstream_id: str) -> None:
        """Resume the upstream session ``upstream_id`` (its connection dropped) through the
        gateway, as a client does on a new socket."""
        self.ws = await websockets.connect(ws_base + "/v1/ws", additional_headers=AGENT_KEY)
        await self.ws.send(json.dumps({"type": "session.resume", "session_id": upstream_id}))
        ready = json.loads(await asyncio.wait_for(self.ws.recv(), ANSWER_TIMEOUT_S))
        assert ready["type"] == "session.ready", ready
        self.upstream_id = str(ready["session_id"])
        self.reader = asyncio.get_running_loop().create_task(self._read(self.ws, self.received))

    async def update(self, session: dict[str, Any]) -> None:
        assert self.ws is not None
        self.sent_updates += 1
        await self.ws.send(json.dumps({"type": "session.update", "session": session}))

    async def send(self, message: dict[str, Any]) -> None:
        """Any other client message (one that the upstream answers with an error)."""
        assert self.ws is not None
        self.sent_updates += 1
        await self.ws.send(json.dumps(message))

    @property
    def answered(self) -> bool:
        return len(self.answers()) >= self.sent_updates

    def answers(self) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("type") in ("session.updated", "session.error")]


@dataclass
class ControlApp(Actor):
    """Its own upstream socket (``upstream``) plus the control channel (``ws``)."""

    upstream: ClientConnection | None = None
    upstream_frames: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    upstream_reader: asyncio.Task[None] | None = None
    pending: int = 0  # pushes and own updates not answered yet
    results: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    errors: list[str] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one upstream update at a time
    forwarding: set[asyncio.Task[None]] = field(default_factory=set)
    report_delay_s: float = 0.0  # a slow app: waits this long before reporting a push

    @property
    def busy(self) -> bool:
        return self.pending > 0

    async def open(
        self, emulator_base: str, ws_base: str, token: str, labels: dict[str, str]
    ) -> None:
        if self.kind == "streaming-v3":
            url = f"{emulator_base}/v3/ws?sample_rate=16000&speech_model={self.model}"
            self.upstream = await websockets.connect(url, additional_headers=STREAMING_KEY)
            begin = json.loads(await asyncio.wait_for(self.upstream.recv(), ANSWER_TIMEOUT_S))
            assert begin["type"] == "Begin", begin
            self.upstream_id = str(begin["id"])
        else:
            self.upstream = await websockets.connect(
                emulator_base + "/v1/ws", additional_headers=AGENT_KEY
            )
            await self.upstream.send(json.dumps({"type": "session.update", "session": {}}))
            ready = json.loads(await asyncio.wait_for(self.upstream.recv(), ANSWER_TIMEOUT_S))
            assert ready["type"] == "session.ready", ready
            self.upstream_id = str(ready["session_id"])
        self.upstream_reader = asyncio.get_running_loop().create_task(self._upstream_read())
        self.ws = await websockets.connect(
            ws_base + "/v1/control", additional_headers={"Authorization": f"Bearer {token}"}
        )
        await self.ws.send(json.dumps({"type": "register", "kind": self.kind,
                                       "model": self.model, "labels": labels,
                                       "config": {}}))  # fmt: skip
        registered = json.loads(await asyncio.wait_for(self.ws.recv(), ANSWER_TIMEOUT_S))
        assert registered["type"] == "registered", registered
        self.session_id = str(registered["session_id"])
        self.reader = asyncio.get_running_loop().create_task(self._control_read())

    async def _upstream_read(self) -> None:
        assert self.upstream is not None
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.upstream:
                if isinstance(raw, str):
                    frame = json.loads(raw)
                    if frame.get("type") in ("session.updated", "session.error", "Warning"):
                        await self.upstream_frames.put(frame)

    async def _control_read(self) -> None:
        assert self.ws is not None
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                frame = json.loads(raw)
                self.received.append(frame)
                if frame.get("type") == "push":
                    self.pending += 1
                    task = asyncio.get_running_loop().create_task(self._forward(frame))
                    self.forwarding.add(task)
                    task.add_done_callback(self.forwarding.discard)
                elif frame.get("type") == "update_result":
                    await self.results.put(frame)
                elif frame.get("type") == "error":
                    self.errors.append(f"{frame.get('code')}: {frame.get('message')}")

    async def _send_upstream(self, message: dict[str, Any]) -> str | None:
        """Write one update upstream; the error it drew (voice agent), else None."""
        assert self.upstream is not None
        await self.upstream.send(json.dumps(message))
        if self.kind == "streaming-v3":
            return None  # no answer exists
        answer = await asyncio.wait_for(self.upstream_frames.get(), ANSWER_TIMEOUT_S)
        if answer["type"] == "session.error":
            return f"{answer.get('code')}: {answer.get('message')}"
        return None

    async def _forward(self, push: dict[str, Any]) -> None:
        try:
            async with self.lock:
                error = await self._send_upstream(push["message"])
            if self.report_delay_s:
                await asyncio.sleep(self.report_delay_s)
            assert self.ws is not None
            if error is None:
                await self.ws.send(json.dumps({"type": "applied", "version": push["version"]}))
            else:
                await self.ws.send(json.dumps({"type": "failed", "version": push["version"],
                                               "error": error}))  # fmt: skip
        finally:
            self.pending -= 1

    async def update(self, delta: Delta) -> None:
        """Ask the control plane, then send the accepted fields upstream."""
        assert self.ws is not None
        self.pending += 1
        try:
            self.sent_updates += 1
            await self.ws.send(json.dumps({"type": "update", "config": dict(delta)}))
            result = await asyncio.wait_for(self.results.get(), ANSWER_TIMEOUT_S)
            accepted = {k: delta[k] for k in result["accepted"]}
            if not accepted:
                return
            dialect = STREAMING_V3 if self.kind == "streaming-v3" else VOICE_AGENT_V1
            encoded = dialect.encode(accepted, self.model)
            if encoded.message is not None:
                async with self.lock:
                    await self._send_upstream(encoded.message)
        finally:
            self.pending -= 1

    async def close(self) -> None:
        for task in list(self.forwarding):
            task.cancel()
        await asyncio.gather(*self.forwarding, return_exceptions=True)
        await super().close()
        if self.upstream is not None:
            await self.upstream.close()
        if self.upstream_reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.upstream_reader
