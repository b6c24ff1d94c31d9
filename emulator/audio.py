"""Audio arithmetic, pacing and an energy-based VAD (sans-I/O).

- Chunk duration from bytes: ``pcm_s16le`` is ``2*sample_rate*ms/1000`` bytes, ``pcm_mulaw`` (and
  the voice agent's G.711 ``audio/pcmu`` / ``audio/pcma``) one byte per sample. Opus, Ogg/Opus and
  AAC are not decoded: their duration is unknown, so chunk and pacing rules are skipped and the
  VAD hears silence.
- Pacing: a sliding window of arrivals; a stream is "faster than real time" once the audio
  received inside the window exceeds the wall time the window spans by more than a tolerance.
- VAD: 10 ms frames; speech probability rises linearly from 0 at ``floor_dbfs`` to 1 at
  ``ceiling_dbfs`` (RMS level relative to full scale); a frame is speech when its probability
  is above zero and at least the session's current ``vad_threshold``.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterator
from functools import lru_cache
from operator import mul

__all__ = [
    "Pacer",
    "SpeechMeter",
    "bytes_per_sample",
    "chunk_duration_ms",
    "encode_linear",
    "format_ms",
    "tone",
]

# encoding name -> bytes per sample (None: compressed, duration unknown)
_BYTES_PER_SAMPLE: dict[str, int | None] = {
    "pcm_s16le": 2,
    "pcm_mulaw": 1,
    "opus": None,
    "ogg_opus": None,
    "aac": None,
    "audio/pcm": 2,
    "audio/pcmu": 1,
    "audio/pcma": 1,
}


def bytes_per_sample(encoding: str) -> int | None:
    return _BYTES_PER_SAMPLE.get(encoding)


def chunk_duration_ms(nbytes: int, encoding: str, sample_rate: int) -> float | None:
    """Audio milliseconds in ``nbytes`` of ``encoding``; None when it cannot be known."""
    width = _BYTES_PER_SAMPLE.get(encoding)
    if width is None or sample_rate <= 0:
        return None
    return nbytes * 1000.0 / (width * sample_rate)


def format_ms(ms: float) -> str:
    """``50`` for whole milliseconds, else two decimals (``3.12``)."""
    return str(int(ms)) if float(ms).is_integer() else f"{ms:.2f}"


# --- G.711 ------------------------------------------------------------------------------------


def _ulaw_to_linear(code: int) -> int:
    code = ~code & 0xFF
    sign = code & 0x80
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    sample = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return -sample if sign else sample


def _alaw_to_linear(code: int) -> int:
    code ^= 0x55
    value = (code & 0x0F) << 4
    segment = (code & 0x70) >> 4
    if segment == 0:
        value += 8
    else:
        value += 0x108
        if segment > 1:
            value <<= segment - 1
    return value if code & 0x80 else -value


_ULAW = tuple(_ulaw_to_linear(c) for c in range(256))
_ALAW = tuple(_alaw_to_linear(c) for c in range(256))
_ULAW_SQ = tuple(v * v for v in _ULAW)
_ALAW_SQ = tuple(v * v for v in _ALAW)


def _encoder(table: tuple[int, ...]) -> tuple[list[int], list[int]]:
    pairs = sorted((value, code) for code, value in enumerate(table))
    return [v for v, _ in pairs], [c for _, c in pairs]


_ULAW_ENC = _encoder(_ULAW)
_ALAW_ENC = _encoder(_ALAW)


def _nearest(sample: int, enc: tuple[list[int], list[int]]) -> int:
    values, codes = enc
    i = bisect.bisect_left(values, sample)
    if i == 0:
        return codes[0]
    if i == len(values):
        return codes[-1]
    return codes[i] if values[i] - sample < sample - values[i - 1] else codes[i - 1]


def encode_linear(samples: list[int], encoding: str) -> bytes:
    """16-bit linear samples -> bytes in ``encoding`` (s16le, mu-law or A-law)."""
    if encoding in ("pcm_mulaw", "audio/pcmu"):
        return bytes(_nearest(s, _ULAW_ENC) for s in samples)
    if encoding == "audio/pcma":
        return bytes(_nearest(s, _ALAW_ENC) for s in samples)
    return b"".join(int(s).to_bytes(2, "little", signed=True) for s in samples)


@lru_cache(maxsize=64)
def tone(encoding: str, sample_rate: int, ms: int, volume: int = 100, hz: float = 220.0) -> bytes:
    """``ms`` of a sine tone (deterministic; cached) — the agent's synthetic voice."""
    count = sample_rate * ms // 1000
    amplitude = 0.3 * 32767 * max(0, min(100, volume)) / 100.0
    samples = [
        round(amplitude * math.sin(2 * math.pi * hz * i / sample_rate)) for i in range(count)
    ]
    return encode_linear(samples, encoding)


# --- pacing -----------------------------------------------------------------------------------


class Pacer:
    """Sliding-window rate check: audio in the window vs the wall time the window spans."""

    __slots__ = ("_arrivals", "_tolerance_ms", "_total_ms", "_window_s")

    def __init__(self, window_s: float, tolerance_ms: float) -> None:
        self._window_s = window_s
        self._tolerance_ms = tolerance_ms
        self._arrivals: deque[tuple[float, float]] = deque()
        self._total_ms = 0.0

    def add(self, now: float, audio_ms: float) -> tuple[float, float] | None:
        """Record a chunk; ``(audio_s, wall_s)`` of the window when it runs too fast."""
        if math.isinf(self._tolerance_ms):
            return None
        arrivals = self._arrivals
        arrivals.append((now, audio_ms))
        self._total_ms += audio_ms
        horizon = now - self._window_s
        while len(arrivals) > 1 and arrivals[0][0] < horizon:
            self._total_ms -= arrivals.popleft()[1]
        span_s = now - arrivals[0][0]
        if self._total_ms - span_s * 1000.0 > self._tolerance_ms:
            return self._total_ms / 1000.0, span_s
        return None

    def reset(self) -> None:
        self._arrivals.clear()
        self._total_ms = 0.0


# --- VAD --------------------------------------------------------------------------------------


class SpeechMeter:
    """Splits a byte stream into 10 ms frames and rates each frame's speech probability."""

    __slots__ = ("_floor", "_frame_bytes", "_frame_ms", "_kind", "_range", "_rest", "_samples")

    def __init__(
        self, encoding: str, sample_rate: int, floor_dbfs: float, ceiling_dbfs: float
    ) -> None:
        width = _BYTES_PER_SAMPLE.get(encoding)
        self._kind = {"pcm_mulaw": "u", "audio/pcmu": "u", "audio/pcma": "a"}.get(
            encoding, "s16" if width == 2 else None
        )
        self._samples = max(1, sample_rate // 100)
        self._frame_bytes = self._samples * (width or 1)
        self._frame_ms = self._samples * 1000.0 / sample_rate if sample_rate > 0 else 10.0
        self._floor = floor_dbfs
        self._range = ceiling_dbfs - floor_dbfs
        self._rest = b""

    @property
    def decodable(self) -> bool:
        return self._kind is not None

    def frames(self, data: bytes) -> Iterator[tuple[float, float]]:
        """Yield ``(speech_probability, frame_ms)`` per complete frame; keeps the remainder."""
        if self._kind is None:
            return
        buf = self._rest + data if self._rest else data
        size = self._frame_bytes
        end = len(buf) - len(buf) % size
        view = memoryview(buf)
        for start in range(0, end, size):
            yield self._probability(view[start : start + size]), self._frame_ms
        self._rest = bytes(view[end:])

    def _probability(self, frame: memoryview) -> float:
        if self._kind == "s16":
            samples = frame.cast("h")
            energy = sum(map(mul, samples, samples))
        elif self._kind == "u":
            energy = sum(map(_ULAW_SQ.__getitem__, frame))
        else:
            energy = sum(map(_ALAW_SQ.__getitem__, frame))
        mean = energy / self._samples
        if mean < 1.0:
            return 0.0
        dbfs = 10.0 * math.log10(mean / (32768.0 * 32768.0))
        return min(1.0, max(0.0, (dbfs - self._floor) / self._range))
