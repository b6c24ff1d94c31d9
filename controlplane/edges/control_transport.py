"""A control channel as a push ``Transport``: the push frame written to the connection
(``ControlTransport.write``, one call per session of a fan-out: compiled, ``sessions.native``).

The handshake and the session's machine are ``control_channel`` and ``control_session``.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http import ws_ext_parse

from controlplane.edges.unsent import MAX_UNSENT_BYTES, Unsent, text_frame
from controlplane.push.live import CONGESTED_BYTES, write_buffer_size
from controlplane.push.protocol import Push

__all__ = ["ControlTransport"]


class ControlTransport:
    """A control channel as a push ``Transport``. A push frame is written the way
    ``websockets.broadcast`` writes: its bytes built here (the session's prefix, the version,
    the message encoded once per distinct frame) and handed to the connection's transport
    (``request.transport``, public) at once, without aiohttp's per-frame coroutines; flow
    control: a write to a congested socket (a worker's) first waits for the transport to
    resume the writer, an inline write never waits (``write``). A socket that negotiated
    permessage-deflate (``ws.compress``) gets the same frames compressed here (``_deflate``,
    RFC 7692: the socket's one compressor, with the negotiated window and context takeover),
    written the same way: every data frame of that connection goes through this transport
    (pushes, answers, the welcome, errors), never aiohttp's own compressor. One built
    without its request gets ``send_str``.

    The one private call: the worker's wait for a paused writer, ``BaseProtocol.
    _drain_helper()`` of ``request.protocol`` (aiohttp has no public drain for a WebSocket:
    ``StreamResponse.drain()`` is deprecated): why aiohttp is pinned (pyproject.toml)."""

    __slots__ = (
        "_deflate", "_flush", "_head", "_prefix", "_protocol", "_raw", "_transport", "handed",
        "unsent", "ws",
    )  # fmt: skip
    acknowledging = True
    runs_at_connect = True  # the app already runs the config it registered with (exposures)

    def __init__(
        self, ws: web.WebSocketResponse, session_id: str, request: web.BaseRequest | None = None
    ) -> None:
        self.ws = ws
        self._prefix = '{"type":"push","session_id":' + json.dumps(session_id) + ',"version":'
        self._head = self._prefix.encode()
        # the connection's transport and protocol (the socket's, for its whole life)
        self._transport = None if request is None else request.transport
        self._protocol = None if request is None else request.protocol
        # frames built here (after prepare(): what was negotiated)
        self._raw = self._transport is not None
        # a compressed socket's compressor (None: uncompressed), as aiohttp's writer would
        # make it: level 1, the negotiated window bits, and no context kept between messages
        # when the app asked for server_no_context_takeover (aiohttp's own parse of the
        # header it answered). Its one compressor: a frame compressed here is written.
        self._deflate: Any = None
        self._flush = zlib.Z_SYNC_FLUSH
        if request is not None and self._raw and ws.compress:
            _, notakeover = ws_ext_parse(
                request.headers.get(hdrs.SEC_WEBSOCKET_EXTENSIONS), isserver=True
            )
            self._deflate = zlib.compressobj(1, zlib.DEFLATED, -int(ws.compress))
            if notakeover:
                self._flush = zlib.Z_FULL_FLUSH
        # its unsent bytes, capped (edges.unsent)
        self.unsent = Unsent(self._transport, session_id) if self._raw else None
        # send_str's last push (a socket built without its request): aiohttp writes its
        # frame, THEN may wait for the drain, so a worker's write given up after that may
        # have reached the app (push.sending). The raw path waits BEFORE it writes and never
        # after: given up, nothing was written.
        self.handed: Push | None = None

    def congested(self) -> bool:
        transport = self._transport
        if transport is None:
            return write_buffer_size(self.ws) > CONGESTED_BYTES
        try:
            return transport.get_write_buffer_size() > CONGESTED_BYTES
        except (AttributeError, RuntimeError):
            return False

    async def write(self, push: Push, wire: dict[str, Any], text: str) -> None:
        ws, transport, protocol = self.ws, self._transport, self._protocol
        if ws.closed:
            raise ConnectionError("control channel is closed")
        if not self._raw or transport is None or protocol is None:
            self.handed = push
            await ws.send_str(f'{self._prefix}{push.version},"message":{text}}}')
            return
        buffered = transport.get_write_buffer_size()
        if buffered > CONGESTED_BYTES and protocol.writing_paused:
            # a worker's write (a fan-out writes inline only to a socket that is not
            # congested): wait for the app to read before adding a frame. Never after the
            # write: a fan-out's inline write that fills the buffer past asyncio's high-water
            # mark waited there for the app, and one app that stopped reading stalled the
            # fan-out of every session behind it (test_slow_consumer). So an app's unsent
            # bytes stay under CONGESTED_BYTES + one frame, and only its own worker waits.
            await protocol._drain_helper()
            buffered = transport.get_write_buffer_size()
        if transport.is_closing():
            raise ConnectionError("control channel is closing")
        if self._deflate is None:
            frame = _text_frame(self._head, push.version, text)
        else:
            frame = self._deflated(_payload(self._head, push.version, text))
        unsent = self.unsent  # (asked only when the frame may not fit, not once per push)
        over = unsent is not None and buffered + len(frame) > MAX_UNSENT_BYTES
        if over and unsent is not None and not unsent.fits(len(frame)):
            raise ConnectionError(unsent.close_over(len(frame)))
        transport.write(frame)

    async def answer(self, text: str) -> None:
        """A frame the app's own message asked for (an answer, an error, a heartbeat),
        written at once: never waiting for the app to read (``edges.unsent``); dropped once
        the connection is closing (over the cap, the connection is closed instead)."""
        transport, unsent = self._transport, self.unsent
        if transport is None or unsent is None:
            await self.ws.send_str(text)
            return
        if transport.is_closing():
            return
        if self._deflate is None:
            frame = text_frame(text.encode())
        else:
            frame = self._deflated(text.encode())
        if not unsent.fits(len(frame)):
            unsent.close_over(len(frame))
            return
        transport.write(frame)

    def _deflated(self, payload: bytes) -> bytes:
        """One compressed text frame of ``payload`` (RFC 7692 §7.2.1: RSV1, the deflate
        output flushed and its 00 00 ff ff tail removed). The compressor's context moves on:
        call it only for a frame that is then written."""
        deflate = self._deflate
        data = deflate.compress(payload) + deflate.flush(self._flush)
        if data.endswith(b"\x00\x00\xff\xff"):
            data = data[:-4]
        return text_frame(data, 0xC1)


# the last message's bytes and the last version's digits (a fan-out's sessions share them)
_TAIL: list[tuple[str, bytes]] = [("", b"")]
_VERSION: list[tuple[int, bytes]] = [(0, b"0")]
_LEN7 = struct.Struct("!BB").pack
_LEN16 = struct.Struct("!BBH").pack
_LEN64 = struct.Struct("!BBQ").pack


def _payload(head: bytes, version: int, text: str) -> bytes:
    """``{head}{version},"message":{text}}`` (a compressed frame's payload)."""
    last = _TAIL[0]
    if last[0] is not text:
        last = _TAIL[0] = (text, (',"message":' + text + "}").encode())
    digits = _VERSION[0]
    if digits[0] != version:
        digits = _VERSION[0] = (version, b"%d" % version)
    return b"".join((head, digits[1], last[1]))


def _text_frame(head: bytes, version: int, text: str) -> bytes:
    """One unmasked, uncompressed WebSocket text frame (RFC 6455 §5.2) of
    ``{head}{version},"message":{text}}``, joined once."""
    last = _TAIL[0]
    if last[0] is not text:
        last = _TAIL[0] = (text, (',"message":' + text + "}").encode())
    digits = _VERSION[0]
    if digits[0] != version:
        digits = _VERSION[0] = (version, b"%d" % version)
    n = len(head) + len(digits[1]) + len(last[1])
    if n < 126:
        header = _LEN7(0x81, n)
    elif n < 65536:
        header = _LEN16(0x81, 126, n)
    else:
        header = _LEN64(0x81, 127, n)
    return b"".join((header, head, digits[1], last[1]))
