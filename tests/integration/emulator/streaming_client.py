"""Raw ``websockets`` helpers for the streaming v3 tests."""

from __future__ import annotations

import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

__all__ = ["drain", "open_stream"]


def open_stream(
    base: str, query: str = "sample_rate=16000", headers: dict[str, str] | None = None
) -> Any:
    headers = {"Authorization": "test-key"} if headers is None else headers
    return connect(
        f"{base}/v3/ws?{query}",
        additional_headers=headers,
        compression=None,
        open_timeout=5,
        max_size=None,
    )


async def drain(ws: ClientConnection) -> tuple[list[dict[str, Any]], int | None, str | None]:
    """Read until the server closes: (messages, close code, close reason)."""
    messages: list[dict[str, Any]] = []
    try:
        async for raw in ws:
            messages.append(json.loads(raw))
    except ConnectionClosed:
        pass
    return messages, ws.close_code, ws.close_reason
