"""``Silence`` messages (Streaming v3, U3-Pro family, opt-in ``acknowledge_silence=true``).

PROTOCOLS.md 1.7.5b: about once per second while no speech is being transcribed, the server
sends ``{"type": "Silence", "start_ms": int, "end_ms": int}`` (session audio positions, the
clock of word timestamps). The emulator's rule, on audio time so it is deterministic: while no
turn is open, each time the unreported silent stretch reaches ``interval_ms`` of audio, one
message covers it, and the next stretch starts where it ended (consecutive, non-overlapping
ranges). Speech (a turn opening) discards the unreported rest; silence after a turn ends counts
from the turn's end. Sans-I/O: audio positions in, messages out.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["INTERVAL_MS", "SilenceReporter"]

INTERVAL_MS: Final = 1000.0


class SilenceReporter:
    __slots__ = ("_from", "interval_ms")

    def __init__(self, interval_ms: float = INTERVAL_MS) -> None:
        self.interval_ms = interval_ms
        self._from: float | None = 0.0  # audio position where the unreported silence begins

    def after_frame(self, audio_ms: float, turn_open: bool) -> dict[str, Any] | None:
        """Called after each audio frame is fed to the turn detector: ``audio_ms`` is the
        session's audio position after the frame, ``turn_open`` whether speech is being
        transcribed. The ``Silence`` message due now, if any."""
        if turn_open:
            self._from = None
            return None
        if self._from is None:  # a turn just ended: silence counts from here
            self._from = audio_ms
            return None
        if audio_ms - self._from < self.interval_ms - 1e-6:
            return None
        message = {"type": "Silence", "start_ms": round(self._from), "end_ms": round(audio_ms)}
        self._from = audio_ms
        return message
