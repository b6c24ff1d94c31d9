"""The ``CP_AUDIT`` batch format (pure): many version-log lines in one message.

Issue #23 (the NATS work of a publish must not grow with its sessions): a shipping pass sends
its entries as a few messages per replica, not one per entry. A batch message's payload is
the lines exactly as the local JSONL file holds them (canonical JSON, no trailing newline),
joined by ``\\n``, compressed with zlib when the header ``Cp-Audit-Encoding: zlib`` says so
(entries of one fan-out are alike: ~100 bytes per entry instead of ~700). A payload without
that header is plain lines; a single line without a newline is the per-entry form of stores
written before batching, so every message the stream ever held decodes the same way.

``pack`` splits a group of lines only where one compressed payload would exceed ``cap``
(below the server's ``max_payload``); ``unpack`` refuses a payload that inflates past
``MAX_DECODED_BYTES`` (a hostile message never exhausts the reader's memory). ``batch_id`` is
the ``Nats-Msg-Id``: the writer node, the source log position of the first and last line, and
a digest of the payload, so the re-ship of the same lines after a crash or a failed attempt is
deduplicated by JetStream and any other content is never mistaken for a duplicate.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping, Sequence
from typing import Final

__all__ = [
    "ENCODING",
    "ENCODING_HEADER",
    "MAX_DECODED_BYTES",
    "BatchError",
    "batch_id",
    "pack",
    "unpack",
]

ENCODING_HEADER: Final = "Cp-Audit-Encoding"
ENCODING: Final = "zlib"
LEVEL: Final = 6
MAX_DECODED_BYTES: Final = 256 * 1024 * 1024


class BatchError(ValueError):
    """A message that is not a readable batch (names what and which limit)."""


def pack(lines: Sequence[bytes], cap: int) -> list[tuple[bytes, int, int]]:
    """Compressed payloads of ``lines`` in order, each at most ``cap`` bytes, as ``(payload,
    first index, end index)``. One payload unless the lines do not fit: then halves, and so on.
    A single line that does not fit compressed raises ``BatchError``."""
    out: list[tuple[bytes, int, int]] = []
    todo = [(0, len(lines))]
    while todo:
        start, end = todo.pop()
        payload = zlib.compress(b"\n".join(lines[start:end]), LEVEL)
        if len(payload) <= cap:
            out.append((payload, start, end))
        elif end - start == 1:
            raise BatchError(f"one audit line of {len(lines[start])} bytes does not fit in a "
                             f"message of {cap} bytes even compressed")  # fmt: skip
        else:
            middle = (start + end) // 2
            todo += [(middle, end), (start, middle)]  # first half popped first: order kept
    return out


def unpack(
    data: bytes, headers: Mapping[str, str] | None, *, limit: int = MAX_DECODED_BYTES
) -> list[bytes]:
    """The lines of one stored message (a batch, or one line of the per-entry form); a batch
    inflating past ``limit`` bytes is refused."""
    encoding = (headers or {}).get(ENCODING_HEADER)
    if encoding is None:
        return [line for line in data.split(b"\n") if line]
    if encoding != ENCODING:
        raise BatchError(f"{ENCODING_HEADER} {encoding!r:.40} is not {ENCODING!r}")
    inflate = zlib.decompressobj()
    try:
        raw = inflate.decompress(data, limit)
    except zlib.error as exc:
        raise BatchError(f"a {ENCODING} audit batch does not decompress: {exc}") from None
    if inflate.unconsumed_tail:
        raise BatchError(f"an audit batch inflates past {limit} bytes")
    return [line for line in raw.split(b"\n") if line]


def batch_id(node: str, first: str, last: str, payload: bytes) -> str:
    """``Nats-Msg-Id`` of a batch: ``batch/<node>/<first position>..<last position>/<digest>``
    (positions ``<file>:<byte offset>`` of the first and last line in the writer's log)."""
    return f"batch/{node}/{first}..{last}/{hashlib.sha256(payload).hexdigest()[:24]}"
