"""Admission of client sockets (docs/reliability.md#connection-limits): what a replica accepts
on ``/v3/ws``, ``/v1/ws`` and ``/v1/control`` before it holds state for a client.

- :class:`ConnectionSlots` — a per-replica cap on open gateway and control-channel sockets
  (``max_connections``). A socket over the cap is refused *before the upgrade* with HTTP 503,
  error code ``too_many_connections`` and ``Retry-After``; nothing is registered.
- :class:`FirstFrames` — the socket's frames, the first of which must arrive within
  ``first_message_timeout_s`` of the upgrade, else the socket is closed with the documented
  code (``/v1/ws`` and ``/v1/control``: 1008; ``/v3/ws``: 3006, the code the streaming upstream
  itself uses when it ends an inactive session). On ``/v3/ws`` audio counts: a streaming client
  may legitimately send audio first, and any frame (audio, ``KeepAlive``, an update) proves it
  alive; later silence is the upstream's business (its ``inactivity_timeout``, its 3 h cap).
- :class:`UpdateRate` — a token bucket per session for client configuration updates
  (``client_update_burst`` updates at once, ``client_update_rate_per_s`` sustained): one client
  cannot grow the audit log without bound. What happens to an update over the rate is the
  caller's protocol decision (close 4429 on ``/v3/ws``; a ``rate_limited`` error frame on
  ``/v1/ws`` and ``/v1/control``, the update dropped and not logged).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import WSMessage, WSMsgType, web

from sessions.clock import Clock

__all__ = [
    "FIRST_MESSAGE_CLOSE",
    "RATE_LIMIT_CLOSE",
    "ConnectionSlots",
    "FirstFrames",
    "UpdateRate",
    "UpdateRates",
    "close_reason",
    "first_frame",
    "refuse_over_rate",
    "streaming_silence_error",
]

FIRST_MESSAGE_CLOSE: Final = 1008  # /v1/ws, /v1/control: no first message in time
RATE_LIMIT_CLOSE: Final = 4429  # /v3/ws: configuration updates over the rate
RETRY_AFTER_S: Final = 1

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ConnectionSlots:
    """Counts the sockets this replica holds (handshakes in progress included) under a cap."""

    __slots__ = ("in_use", "limit", "refused")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self.refused = 0

    def guard(self, handler: Handler) -> Handler:
        """``handler`` behind the cap: over it, 503 ``too_many_connections`` before any upgrade."""

        async def admitted(request: web.Request) -> web.StreamResponse:
            if self.in_use >= self.limit:
                self.refused += 1
                body = {"error": {
                    "code": "too_many_connections",
                    "message": f"this replica holds its limit of {self.limit} connections; "
                    "retry, or connect to another replica",
                    "details": {"limit": self.limit},
                }}  # fmt: skip
                return web.json_response(
                    body, status=503, headers={"Retry-After": str(RETRY_AFTER_S)}
                )
            self.in_use += 1
            try:
                return await handler(request)
            finally:
                self.in_use -= 1

        return admitted


async def first_frame(
    ws: web.WebSocketResponse, timeout_s: float, *, close_code: int, error: str | None
) -> WSMessage | None:
    """The socket's first frame, or None when none came within ``timeout_s`` (then ``error``,
    a text frame in the endpoint's own protocol, is sent and the socket closed)."""
    try:
        return await ws.receive(timeout=timeout_s)
    except TimeoutError:
        if error is not None:
            with contextlib.suppress(Exception):
                await ws.send_str(error)
        reason = f"no message within {timeout_s:g}s of connecting".encode()
        with contextlib.suppress(Exception):
            await ws.close(code=close_code, message=reason)
        return None


class FirstFrames:
    """``async for msg in FirstFrames(ws, timeout_s, ...)``: like ``async for msg in ws``, but
    the first frame must come within ``timeout_s`` (None: no deadline), else the socket is
    closed as :func:`first_frame` does and the iteration ends."""

    __slots__ = ("_close_code", "_error", "_timeout", "_ws", "silent")

    def __init__(
        self,
        ws: web.WebSocketResponse,
        timeout_s: float | None,
        *,
        close_code: int,
        error: str | None = None,
    ) -> None:
        self._ws = ws
        self._timeout = timeout_s
        self._close_code = close_code
        self._error = error
        self.silent = False  # the deadline passed without a frame

    def __aiter__(self) -> FirstFrames:
        return self

    async def __anext__(self) -> WSMessage:
        if self._timeout is None:
            msg = await self._ws.receive()
        else:
            timeout, self._timeout = self._timeout, None
            got = await first_frame(
                self._ws, timeout, close_code=self._close_code, error=self._error
            )
            if got is None:
                self.silent = True
                raise StopAsyncIteration
            msg = got
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            raise StopAsyncIteration
        return msg


def streaming_silence_error(timeout_s: float) -> str:
    """The streaming upstream's own ``Error`` frame for an ended inactive session."""
    reason = f"Inactivity timeout: no audio or message within {timeout_s:g}s of connecting"
    return json.dumps({"type": "Error", "error_code": 3006, "error": reason})


class UpdateRate:
    """Token bucket: ``burst`` updates at once, refilled at ``rate_per_s``; time from a Clock."""

    __slots__ = ("_clock", "_last", "_tokens", "burst", "rate_per_s")

    def __init__(self, clock: Clock, *, burst: int, rate_per_s: float) -> None:
        self._clock = clock
        self.burst = burst
        self.rate_per_s = rate_per_s
        self._tokens = float(burst)
        self._last = clock.monotonic()

    def allow(self) -> bool:
        now = self._clock.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate_per_s)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class UpdateRates:
    """One :class:`UpdateRate` per live session, created on its first update."""

    __slots__ = ("_clock", "_rates", "burst", "rate_per_s")

    def __init__(self, clock: Clock, *, burst: int, rate_per_s: float) -> None:
        self._clock = clock
        self.burst = burst
        self.rate_per_s = rate_per_s
        self._rates: dict[str, UpdateRate] = {}

    def allow(self, session_id: str) -> bool:
        rate = self._rates.get(session_id)
        if rate is None:
            rate = self._rates[session_id] = UpdateRate(
                self._clock, burst=self.burst, rate_per_s=self.rate_per_s
            )
        return rate.allow()

    def forget(self, session_id: str) -> None:
        self._rates.pop(session_id, None)

    def problem(self) -> str:
        return (
            f"configuration update refused: at most {self.burst} at once and "
            f"{self.rate_per_s:g} per second per session"
        )


async def refuse_over_rate(
    ws: web.WebSocketResponse, problem: str, *, error_frame: str | None
) -> None:
    """An update over the rate, refused in the endpoint's protocol: ``error_frame`` (its own
    error message; the socket stays open) or, when None (Streaming v3, which has no error
    message that leaves a session open), an ``Error`` frame and close 4429."""
    if error_frame is not None:
        with contextlib.suppress(Exception):
            await ws.send_str(error_frame)
        return
    with contextlib.suppress(Exception):
        await ws.send_str(
            json.dumps({"type": "Error", "error_code": RATE_LIMIT_CLOSE, "error": problem})
        )
    with contextlib.suppress(Exception):
        await ws.close(
            code=RATE_LIMIT_CLOSE, message=problem.encode()[:120].decode("utf-8", "ignore").encode()
        )


def close_reason(text: str) -> bytes:
    """A close frame's reason: at most 120 bytes of UTF-8, cut at a character boundary."""
    return text.encode("utf-8", "replace")[:120].decode("utf-8", "ignore").encode("utf-8")
