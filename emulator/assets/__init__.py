"""A small deterministic audio source for demos, tests and load tests (no files needed).

``pattern_audio`` renders a list of ``("speech", ms)`` / ``("silence", ms)`` segments as PCM:
"speech" is a voiced-sounding harmonic tone (about -14 dBFS, which the emulator's VAD rates as
speech probability 1.0 with default settings), "silence" is digital silence. ``level_dbfs``
lets a test produce quieter speech to exercise ``vad_threshold``. Output is ``pcm_s16le``
(little endian), ``pcm_mulaw``/``audio/pcmu`` or ``audio/pcma``.

``python -m emulator.assets out.wav`` writes ``DEMO_PATTERN`` as a 16 kHz WAV file.
"""

from __future__ import annotations

import math
import sys
import wave
from collections.abc import Iterator, Sequence

from emulator.audio import chunk_duration_ms, encode_linear

__all__ = ["DEMO_PATTERN", "chunks", "pattern_audio", "silence", "speech", "write_wav"]

Segment = tuple[str, int]

# ~6.5 s: two user turns separated by pauses (used by `controlplane emulator` demos and benches)
DEMO_PATTERN: tuple[Segment, ...] = (
    ("silence", 300),
    ("speech", 1200),
    ("silence", 1500),
    ("speech", 800),
    ("silence", 2700),
)


def _speech_samples(count: int, sample_rate: int, level_dbfs: float, offset: int) -> list[int]:
    # three harmonics of a 150 Hz "voice" with a slow vibrato; RMS scaled to level_dbfs
    rms_target = 32768.0 * 10 ** (level_dbfs / 20.0)
    amplitude = rms_target / math.sqrt((1.0 + 0.25 + 0.0625) / 2.0)
    out: list[int] = []
    two_pi = 2.0 * math.pi
    for n in range(offset, offset + count):
        t = n / sample_rate
        f0 = 150.0 + 8.0 * math.sin(two_pi * 5.0 * t)
        phase = two_pi * f0 * t
        value = math.sin(phase) + 0.5 * math.sin(2 * phase) + 0.25 * math.sin(3 * phase)
        out.append(max(-32768, min(32767, round(amplitude * value))))
    return out


def pattern_audio(
    pattern: Sequence[Segment],
    sample_rate: int = 16_000,
    encoding: str = "pcm_s16le",
    level_dbfs: float = -14.0,
) -> bytes:
    """Render ``pattern`` deterministically (same input -> same bytes)."""
    samples: list[int] = []
    for kind, ms in pattern:
        count = sample_rate * ms // 1000
        if kind == "speech":
            samples.extend(_speech_samples(count, sample_rate, level_dbfs, len(samples)))
        elif kind == "silence":
            samples.extend([0] * count)
        else:
            raise ValueError(f"segment kind must be 'speech' or 'silence', not {kind!r}")
    return encode_linear(samples, encoding)


def speech(ms: int, sample_rate: int = 16_000, encoding: str = "pcm_s16le") -> bytes:
    return pattern_audio([("speech", ms)], sample_rate, encoding)


def silence(ms: int, sample_rate: int = 16_000, encoding: str = "pcm_s16le") -> bytes:
    return pattern_audio([("silence", ms)], sample_rate, encoding)


def chunks(
    data: bytes, chunk_ms: int = 50, sample_rate: int = 16_000, encoding: str = "pcm_s16le"
) -> Iterator[bytes]:
    """Split ``data`` into ``chunk_ms`` pieces (the last one may be shorter)."""
    one_ms = chunk_duration_ms(1, encoding, sample_rate)
    if one_ms is None:
        raise ValueError(f"cannot chunk {encoding} by duration")
    size = max(1, round(chunk_ms / one_ms))
    width = 2 if encoding in ("pcm_s16le", "audio/pcm") else 1
    size -= size % width
    for start in range(0, len(data), size):
        yield data[start : start + size]


def write_wav(path: str, pattern: Sequence[Segment] = DEMO_PATTERN, rate: int = 16_000) -> None:
    with wave.open(path, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pattern_audio(pattern, rate))


if __name__ == "__main__":  # pragma: no cover - manual helper
    write_wav(sys.argv[1] if len(sys.argv) > 1 else "emulator-demo.wav")
