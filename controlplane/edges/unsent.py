"""A control-channel connection's unsent bytes, bounded (docs/reliability.md#connection-limits).

The bytes the server holds for one connection that its app has not read stay under
``MAX_UNSENT_BYTES``. Pushes stop being written inline past ``CONGESTED_BYTES`` (the session's
own worker waits for the app: ``controlplane.push.sending``), so a connection gets near the
cap only through frames the app makes the server write while it does not read them (answers
to its reports, heartbeats, errors). A frame that would take the connection past the cap is
not written: the connection is closed instead (``close_over``), code ``UNSENT_CLOSE`` with a
reason naming the limit; the close frame waits behind the unsent bytes (an app that reads
again sees it), and the socket is aborted ``ABORT_AFTER_S`` later if it has not drained by
then, which frees its buffers.

Nothing waits for the app: an answer is written at once, without aiohttp's flow-control wait
(which blocked the connection's handler, so a not-reading app's own reports stopped being
read). A socket that negotiated compression gets the same, its frames compressed by
``ControlTransport``.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any, Final

__all__ = [
    "ABORT_AFTER_S",
    "MAX_UNSENT_BYTES",
    "UNSENT_CLOSE",
    "Unsent",
    "close_frame",
    "text_frame",
]

log = logging.getLogger(__name__)

MAX_UNSENT_BYTES: Final = 512 * 1024
UNSENT_CLOSE: Final = 1008  # policy violation: the app does not read what it asked for
ABORT_AFTER_S: Final = 2.0

_LEN7 = struct.Struct("!BB").pack
_LEN16 = struct.Struct("!BBH").pack
_LEN64 = struct.Struct("!BBQ").pack


def text_frame(payload: bytes, opcode: int = 0x81) -> bytes:
    """One unmasked, uncompressed WebSocket frame (RFC 6455 §5.2), final, of ``payload``."""
    n = len(payload)
    if n < 126:
        return _LEN7(opcode, n) + payload
    if n < 65536:
        return _LEN16(opcode, 126, n) + payload
    return _LEN64(opcode, 127, n) + payload


def close_frame(code: int, reason: str) -> bytes:
    return text_frame(struct.pack("!H", code) + reason.encode()[:123], opcode=0x88)


class Unsent:
    """The cap on one connection: ``fits`` before a frame is added, ``close_over`` when it
    does not fit. ``transport`` is the connection's asyncio transport."""

    __slots__ = ("closed", "session_id", "transport")

    def __init__(self, transport: Any, session_id: str) -> None:
        self.transport = transport
        self.session_id = session_id
        self.closed = False  # closed over the cap (once)

    def fits(self, size: int) -> bool:
        try:
            buffered = int(self.transport.get_write_buffer_size())
        except (AttributeError, RuntimeError):
            return True
        return buffered + size <= MAX_UNSENT_BYTES

    def close_over(self, size: int) -> str:
        """Close the connection: a frame of ``size`` bytes did not fit. The reason, for the
        caller's error."""
        reason = f"unsent bytes over {MAX_UNSENT_BYTES}: the app is not reading its socket"
        if self.closed:
            return reason
        self.closed = True
        transport = self.transport
        log.warning("control channel session %s: a %d-byte frame would take its unsent bytes "
                    "(%d) over %d; closing it (%d)", self.session_id, size,
                    transport.get_write_buffer_size(), MAX_UNSENT_BYTES, UNSENT_CLOSE)  # fmt: skip
        if not transport.is_closing():
            transport.write(close_frame(UNSENT_CLOSE, reason))
            transport.close()  # flushed if the app reads again ...
            # ... else dropped: the buffers go with the socket
            asyncio.get_running_loop().call_later(ABORT_AFTER_S, transport.abort)
        return reason
