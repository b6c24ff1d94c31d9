"""A small typed async client for the control channel (``GET /v1/control``).

An app that keeps its own upstream socket uses it in a few lines::

    async with ControlClient(url, token=TOKEN, kind="voice-agent-v1", model="voice-agent",
                             labels={"tenant": "acme"}, config={"system_prompt": "..."}) as cp:
        async for push in cp.pushes():
            await my_upstream.send(json.dumps(push.message))   # the ready-to-send wire message
            await cp.applied(push.version)                      # or cp.failed(version, error)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

__all__ = ["ControlClient", "ControlError", "ServerPush"]


class ControlError(Exception):
    """The control plane answered ``{"type": "error"}`` or closed the channel."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ServerPush:
    session_id: str
    version: int
    message: dict[str, Any]


class ControlClient:
    def __init__(
        self,
        url: str,
        *,
        token: str,
        kind: str,
        model: str,
        session_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        config: Mapping[str, Any] | None = None,
        open_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self._token = token
        self._register: dict[str, Any] = {
            "type": "register", "kind": kind, "model": model,
            "labels": dict(labels or {}), "config": dict(config or {}),
        }  # fmt: skip
        if session_id is not None:
            self._register["session_id"] = session_id
        self._open_timeout = open_timeout
        self._ws: ClientConnection | None = None
        self.session_id: str | None = None
        self.version = 0
        self.effective_config: dict[str, Any] = {}
        self.locks: dict[str, Any] = {}
        self.last_update_result: dict[str, Any] | None = None

    async def __aenter__(self) -> ControlClient:
        self._ws = await connect(
            self.url,
            additional_headers={"Authorization": f"Bearer {self._token}"},
            open_timeout=self._open_timeout,
            compression=None,
        )
        await self._send(self._register)
        reply = await self._recv()
        if reply.get("type") != "registered":
            raise ControlError(str(reply.get("code", "unexpected")), str(reply.get("message")))
        self.session_id = str(reply["session_id"])
        self.version = int(reply["version"])
        self.effective_config = dict(reply["effective_config"])
        self.locks = dict(reply.get("locks", {}))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    async def pushes(self) -> AsyncIterator[ServerPush]:
        """Every push, in order; other frames (heartbeats, update results) are absorbed."""
        while True:
            frame = await self._recv()
            kind = frame.get("type")
            if kind == "push":
                push = ServerPush(str(frame["session_id"]), int(frame["version"]),
                                  dict(frame["message"]))  # fmt: skip
                self.version = push.version
                yield push
            elif kind == "update_result":
                self.last_update_result = frame
            elif kind == "error":
                raise ControlError(str(frame.get("code")), str(frame.get("message")))

    async def applied(self, version: int) -> None:
        await self._send({"type": "applied", "version": version})

    async def failed(self, version: int, error: str, fields: Sequence[str] | None = None) -> None:
        """The upstream refused the push; ``fields``: the canonical fields it refused (their
        values are never sent to this session again; without it, every field of the push)."""
        frame: dict[str, Any] = {"type": "failed", "version": version, "error": error}
        if fields:
            frame["fields"] = list(fields)
        await self._send(frame)

    async def turn_boundary(self) -> None:
        await self._send({"type": "turn_boundary"})

    async def heartbeat(self) -> None:
        await self._send({"type": "heartbeat"})

    async def update(self, config: Mapping[str, Any]) -> None:
        """Report the app's own config change (locked fields are refused in the result)."""
        await self._send({"type": "update", "config": dict(config)})

    async def _send(self, frame: Mapping[str, Any]) -> None:
        if self._ws is None:
            raise ControlError("not_connected", "use 'async with ControlClient(...)'")
        await self._ws.send(json.dumps(frame))

    async def _recv(self) -> dict[str, Any]:
        if self._ws is None:
            raise ControlError("not_connected", "use 'async with ControlClient(...)'")
        raw = await self._ws.recv()
        frame = json.loads(raw)
        if not isinstance(frame, dict):
            raise ControlError("bad_frame", "the control plane sent a non-object frame")
        return frame
