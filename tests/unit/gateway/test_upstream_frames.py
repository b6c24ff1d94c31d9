"""The gateway's own upstream frames (``gateway_pump.masked_text_frame``), read back by the
rules of RFC 6455 §5.2 (the emulator's aiohttp reads them in the integration tests)."""

from __future__ import annotations

import struct

import pytest

from controlplane.edges.gateway_pump import masked_text_frame
from emulator.errors import InvalidFaults
from emulator.faults import FaultSpec, parse_faults


def _read(frame: bytes) -> tuple[int, str]:
    """One client frame's first byte and its unmasked text."""
    first, second = frame[0], frame[1]
    assert second & 0x80, "a client's frame is masked (RFC 6455 §5.3)"
    n, at = second & 0x7F, 2
    if n == 126:
        (n,), at = struct.unpack("!H", frame[2:4]), 4
    elif n == 127:
        (n,), at = struct.unpack("!Q", frame[2:10]), 10
    key, body = frame[at : at + 4], frame[at + 4 :]
    assert len(body) == n
    return first, bytes(b ^ key[i % 4] for i, b in enumerate(body)).decode()


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65_535, 65_536, 300_001])
def test_a_masked_frame_reads_back_as_its_text(size: int) -> None:
    payload = ("é\U0001f600x" * size).encode()[:size]
    text = payload.decode(errors="ignore")
    assert _read(masked_text_frame(text.encode())) == (0x81, text)  # final, text


def test_two_frames_of_one_text_use_different_keys() -> None:
    assert masked_text_frame(b"same text") != masked_text_frame(b"same text")


def test_stop_reading_fault_parses_and_clears() -> None:
    spec = parse_faults({"stop_reading": True})
    assert spec.stop_reading and spec.to_dict()["stop_reading"] is True
    assert parse_faults({"stop_reading": None}, spec) == FaultSpec()
    with pytest.raises(InvalidFaults, match="stop_reading"):
        parse_faults({"stop_reading": 1})
