"""Raw ``websockets`` helpers for the Voice Agent tests."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

__all__ = ["audio_frames", "expect", "open_agent", "send", "until"]

KEY = {"Authorization": "Bearer test-key"}


def open_agent(base: str, headers: dict[str, str] | None = None) -> Any:
    return connect(
        f"{base}/v1/ws",
        additional_headers=KEY if headers is None else headers,
        compression=None,
        max_size=None,
        open_timeout=5,
    )


async def send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(json.dumps(message))


async def expect(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    message: dict[str, Any] = json.loads(raw)
    return message


async def until(
    ws: ClientConnection, kind: str, timeout: float = 5.0
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Messages received before the first ``kind`` message, and that message."""
    seen: list[dict[str, Any]] = []
    while True:
        message = await expect(ws, timeout)
        if message["type"] == kind:
            return seen, message
        seen.append(message)


def audio_frames(pcm: bytes, frame_bytes: int = 4800) -> list[str]:
    """``input.audio`` messages (100 ms each at 24 kHz s16le by default)."""
    return [
        json.dumps(
            {"type": "input.audio", "audio": base64.b64encode(pcm[i : i + frame_bytes]).decode()}
        )
        for i in range(0, len(pcm), frame_bytes)
    ]
