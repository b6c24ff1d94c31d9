"""Injected time. Logic that reads time takes a Clock; tests pass a FakeClock."""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch (for timestamps that users read)."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds (for timeouts, TTLs and latencies)."""
        ...


class SystemClock:
    # the C functions themselves, not methods wrapping them: the push engine reads the clock
    # a few times per session of a fan-out (a Python frame each was ~2 % of a fan-out)
    now = staticmethod(time.time)
    monotonic = staticmethod(time.monotonic)


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self._wall = start
        self._mono = 1000.0

    def now(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono += seconds

    def step_wall(self, seconds: float) -> None:
        """The wall clock steps (NTP, a VM resumed, an operator): the monotonic one does not."""
        self._wall += seconds
