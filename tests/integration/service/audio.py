"""Deterministic PCM for driving the emulator's turn detection."""

from __future__ import annotations

import math
import struct

SAMPLE_RATE = 16_000
CHUNK_MS = 50


def tone_chunk(ms: int = CHUNK_MS, freq: float = 440.0, amplitude: int = 9000) -> bytes:
    n = SAMPLE_RATE * ms // 1000
    return struct.pack(
        f"<{n}h",
        *(int(amplitude * math.sin(2 * math.pi * freq * i / SAMPLE_RATE)) for i in range(n)),
    )


def silence_chunk(ms: int = CHUNK_MS) -> bytes:
    return b"\x00\x00" * (SAMPLE_RATE * ms // 1000)
