"""Per-session timers, sans-I/O: the sessions waiting on an acknowledgement timeout or a
next-turn hold deadline. The engine's one sweeper task asks ``due(now)`` every
``SWEEP_INTERVAL_S`` (no task or timer handle per session)."""

from __future__ import annotations

from collections.abc import Iterator

from controlplane.push.live import LiveSession
from controlplane.push.protocol import Outcome

__all__ = ["SWEEP_INTERVAL_S", "Timers"]

SWEEP_INTERVAL_S = 0.05


class Timers:
    __slots__ = ("_watch", "ack_timeout_s")

    def __init__(self, ack_timeout_s: float) -> None:
        self.ack_timeout_s = ack_timeout_s
        self._watch: set[LiveSession] = set()

    def track(self, ls: LiveSession) -> None:
        """Watch the session while its push state needs a timer, else stop watching it."""
        if ls.push.next_deadline(self.ack_timeout_s) is None:
            self._watch.discard(ls)
        else:
            self._watch.add(ls)

    def forget(self, ls: LiveSession) -> None:
        self._watch.discard(ls)

    def due(self, now: float) -> Iterator[tuple[LiveSession, Outcome | None]]:
        """The sessions whose timer is due, lazily: ``(ls, outcome)`` for an in-flight push
        that timed out (it ends ``unverified``; the session may have more to send), ``(ls,
        None)`` for a session whose next push may go now (its hold deadline passed)."""
        timeout = self.ack_timeout_s
        for ls in list(self._watch):
            outcome = ls.push.timed_out(now, timeout)
            if outcome is not None:
                yield ls, outcome
            elif ls.push.can_send(now):
                yield ls, None
            elif ls.push.next_deadline(timeout) is None:
                self._watch.discard(ls)  # nothing to wait for (its state is synced)
