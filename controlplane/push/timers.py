"""Per-session timers, sans-I/O: the sessions waiting on an acknowledgement timeout or a
next-turn hold deadline. The engine's one sweeper task asks ``due(now)`` every
``SWEEP_INTERVAL_S`` (no task or timer handle per session).

The deadlines are kept in a heap, so a sweep touches only the sessions whose deadline has
passed: right after a fan-out every session awaits an acknowledgement, and a sweep over all
of them every 50 ms was a third of a core at 50,000 sessions (docs/benchmarks.md). A session
is filed under its ``next_deadline``; a filing that no longer matches the session's current
deadline (re-tracked, forgotten) is dropped when it comes up.

``track_all`` files the sessions whose frames one write-ahead chunk just wrote as one group:
one heap entry under the group's latest deadline (its last write's), so each member is due
at most the chunk's write time (milliseconds) after its own deadline, instead of a heap entry
per session of a fan-out.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator

from controlplane.push.live import LiveSession
from controlplane.push.protocol import Outcome

__all__ = ["SWEEP_INTERVAL_S", "Timers"]

SWEEP_INTERVAL_S = 0.05


class Timers:
    __slots__ = ("_filed", "_heap", "_order", "ack_timeout_s")

    def __init__(self, ack_timeout_s: float) -> None:
        self.ack_timeout_s = ack_timeout_s
        self._filed: dict[LiveSession, float] = {}  # watched session -> its deadline
        # (deadline, order, session or a group of sessions filed together: ``track_all``)
        self._heap: list[tuple[float, int, LiveSession | list[LiveSession]]] = []
        self._order = itertools.count()  # ties: first filed, first due (sessions don't compare)

    def __len__(self) -> int:
        """How many sessions are watched."""
        return len(self._filed)

    def track(self, ls: LiveSession) -> None:
        """Watch the session while its push state needs a timer, else stop watching it."""
        deadline = ls.push.next_deadline(self.ack_timeout_s)
        if deadline is None:
            self._filed.pop(ls, None)
        elif self._filed.get(ls) != deadline:
            self._filed[ls] = deadline
            heapq.heappush(self._heap, (deadline, next(self._order), ls))

    def track_all(self, sessions: list[LiveSession]) -> None:
        """``track`` each of ``sessions`` (a chunk of a fan-out, just written), those that
        need a timer filed together under the latest of their deadlines."""
        timeout, filed = self.ack_timeout_s, self._filed
        group: list[LiveSession] = []
        latest = None
        for ls in sessions:
            deadline = ls.push.next_deadline(timeout)
            if deadline is None:
                filed.pop(ls, None)
                continue
            group.append(ls)
            if latest is None or deadline > latest:
                latest = deadline
        if latest is None:
            return
        for ls in group:
            filed[ls] = latest
        heapq.heappush(self._heap, (latest, next(self._order), group))

    def forget(self, ls: LiveSession) -> None:
        self._filed.pop(ls, None)

    def due(self, now: float) -> Iterator[tuple[LiveSession, Outcome | None]]:
        """The sessions whose timer is due, lazily: ``(ls, outcome)`` for an in-flight push
        that timed out (it ends ``unverified``; the session may have more to send), ``(ls,
        None)`` for a session whose next push may go now (its hold deadline passed).

        Each session due now is considered once per call, even when handling an earlier one
        files it again (the caller syncs sessions as it goes)."""
        heap, filed = self._heap, self._filed
        ready: list[LiveSession] = []
        while heap and heap[0][0] <= now:
            deadline, _, filing = heapq.heappop(heap)
            for ls in filing if isinstance(filing, list) else (filing,):
                if filed.get(ls) == deadline:  # else a stale filing
                    del filed[ls]
                    ready.append(ls)
        timeout = self.ack_timeout_s
        for ls in ready:
            outcome = ls.push.timed_out(now, timeout)
            if outcome is not None:
                yield ls, outcome
            elif ls.push.can_send(now):
                yield ls, None
            elif ls not in filed:
                self.track(ls)  # still waiting (e.g. its deadline moved): filed again
