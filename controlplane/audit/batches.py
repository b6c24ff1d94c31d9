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

``session_filter`` is a batch's index (header ``Cp-Audit-Sessions``): a Bloom filter of the
session ids of its lines, ~10 bits per session (at most ``MAX_FILTER_BITS``: 16 KiB, under
0.5 % false positives up to 10,000 sessions per batch, ~5 % at 20,000). A reader of one
session scans the batches' headers only and fetches the payloads whose filter may hold it
(``may_hold``); a false positive costs one useless fetch, never a missed line, and a batch
without the header (stores written before it) is always fetched.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from collections.abc import Collection, Mapping, Sequence
from typing import Final

__all__ = [
    "ENCODING",
    "ENCODING_HEADER",
    "FILTER_HEADER",
    "MAX_DECODED_BYTES",
    "MAX_FILTER_BITS",
    "BatchError",
    "batch_id",
    "may_hold",
    "pack",
    "session_filter",
    "unpack",
]

ENCODING_HEADER: Final = "Cp-Audit-Encoding"
ENCODING: Final = "zlib"
LEVEL: Final = 6
MAX_DECODED_BYTES: Final = 256 * 1024 * 1024
FILTER_HEADER: Final = "Cp-Audit-Sessions"
FILTER_FORM: Final = "bloom1."  # k = 4 probes from a 16-byte BLAKE2b of the UTF-8 id
MIN_FILTER_BITS: Final = 256
MAX_FILTER_BITS: Final = 1 << 17


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


def _probes(session_id: str, bits: int) -> list[int]:
    digest = hashlib.blake2b(session_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return [int.from_bytes(digest[i : i + 4], "little") & (bits - 1) for i in range(0, 16, 4)]


def session_filter(session_ids: Collection[str]) -> str:
    """The ``Cp-Audit-Sessions`` header value of a batch holding these sessions' lines."""
    bits = MIN_FILTER_BITS
    while bits < 10 * len(session_ids) and bits < MAX_FILTER_BITS:
        bits <<= 1
    field = bytearray(bits // 8)
    for sid in session_ids:
        for probe in _probes(sid, bits):
            field[probe >> 3] |= 1 << (probe & 7)
    return FILTER_FORM + base64.b64encode(field).decode()


def may_hold(headers: Mapping[str, str] | None, session_id: str) -> bool:
    """Whether a batch with these headers may hold lines of the session: False only when its
    filter says it holds none (no filter, or one this reader does not know: True)."""
    value = (headers or {}).get(FILTER_HEADER)
    if value is None or not value.startswith(FILTER_FORM):
        return True
    try:
        field = base64.b64decode(value[len(FILTER_FORM) :], validate=True)
    except (binascii.Error, ValueError):
        return True
    bits = len(field) * 8
    if bits < 8 or bits & (bits - 1):  # not a power of two: not one we wrote
        return True
    return all(field[p >> 3] & (1 << (p & 7)) for p in _probes(session_id, bits))
