"""A policy fan-out: every targeted session re-resolved, its new version logged and written.

One plain loop (DESIGN.md §6: no task per session per push): resolve (a per-fan-out
``Resolver``), ``PushState.want``, the rollout bookkeeping, then take the push and append its
``sent`` entry (``Pusher.queue``); the frames go once their entries are durable, pipelined
(``write_ahead``). A session whose resolution changes only the policy versions in effect gets
an ``unchanged`` entry naming them.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Protocol

from controlplane.push.frames import FrameCache
from controlplane.push.live import LiveSession
from controlplane.push.observer import PushObserver
from controlplane.push.recording import Recorder
from controlplane.push.rollout_status import update_policy_status
from controlplane.push.write_ahead import POLL, Outgoing, WriteAhead
from policies.model import Match, Policy
from policies.resolve import Effective, Resolver
from policies.selectors import matches
from sessions.clock import Clock
from sessions.versionlog.core import VersionLog

__all__ = ["FanOut", "Pusher"]


class Pusher(Protocol):
    """What a fan-out asks of the push engine, per session."""

    @property
    def live(self) -> Mapping[str, LiveSession]: ...

    def adopt(self, ls: LiveSession, effective: Effective, *, sync: bool) -> None:
        """The session's new resolution (its record; synced unless ``sync`` is False)."""

    def queue(self, ls: LiveSession, cache: FrameCache, outgoing: list[Outgoing]) -> bool:
        """Take and log the push due now, its frame on ``outgoing``; True when taken."""

    def sync_session(self, ls: LiveSession) -> None:
        """The session's push state changed: its record and timers follow."""

    async def send_frames(self, outgoing: list[Outgoing]) -> None:
        """Write the frames of logged pushes whose entries are durable."""

    def flush_metrics(self) -> None: ...


class FanOut:
    __slots__ = ("_clock", "_log", "_observer", "_pusher", "_recorder")

    def __init__(
        self,
        pusher: Pusher,
        *,
        clock: Clock,
        versionlog: VersionLog,
        recorder: Recorder,
        observer: PushObserver,
    ) -> None:
        self._pusher = pusher
        self._clock = clock
        self._log = versionlog
        self._recorder = recorder
        self._observer = observer

    async def run(
        self,
        sessions: Iterable[LiveSession],
        policies: list[Policy],
        *,
        cause: str,
        event_at: float | None = None,
        next_turn: tuple[str, float] | None = None,
        relevant: Iterable[Policy] | None = None,
    ) -> int:
        """``PushEngine.reconcile``: returns how many sessions got a new version."""
        pusher = self._pusher
        live = pusher.live
        changed = 0
        cache: FrameCache = {}
        ahead = WriteAhead(self._log, pusher.send_frames)
        outgoing = ahead.outgoing  # logged; each sent once its entry is durable
        written_at = None
        resolver = Resolver(policies)
        selects = None
        if relevant is not None:
            distinct: list[Match] = []  # a new version usually keeps its predecessor's match
            for p in relevant:
                if p.match not in distinct:
                    distinct.append(p.match)
            selects = tuple(partial(matches, m) for m in distinct)
        select_one = selects[0] if selects is not None and len(selects) == 1 else None
        now = self._clock.monotonic()
        # A fan-out allocates per session; a collection in the middle of it showed up as 40 %
        # of the fan-out time in profiles (docs/benchmarks.md). Collect after, not during.
        collecting = gc.isenabled()
        gc.disable()
        try:
            for ls in list(sessions):
                s = ls.session
                if live.get(s.id) is not ls:
                    continue  # ended while an earlier chunk's frames were written
                inputs = ls.inputs()
                if select_one is not None:
                    if not select_one(inputs.target):
                        continue
                elif selects is not None and not any(m(inputs.target) for m in selects):
                    continue
                effective = resolver.resolve_inputs(inputs)
                hold = None
                if next_turn is not None and any(r.id == next_turn[0] for r in effective.applied):
                    hold = now + next_turn[1]
                elif next_turn is not None and next_turn[0] in ls.policy_status:
                    hold = now + next_turn[1]  # retired / no longer targeted: revert on the turn
                version = ls.push.want(
                    effective.config, effective.applied, cause, hold_until=hold, event_at=event_at
                )
                before = s.applied
                # a session that gets a push is synced once, by the push (not twice)
                pusher.adopt(ls, effective, sync=version is None)
                update_policy_status(ls, effective, pending=version is not None)
                if version is None:
                    if effective.applied is not before and effective.applied != before:
                        self._recorder.unchanged(ls, cause, effective.applied)
                    continue
                changed += 1
                if not pusher.queue(ls, cache, outgoing):
                    pusher.sync_session(ls)
                elif len(outgoing) % POLL == 0:
                    await ahead.step()
        finally:
            try:
                await ahead.finish()
                written_at = self._clock.monotonic()
            finally:
                if collecting:
                    gc.enable()
                pusher.flush_metrics()

        if event_at is not None and written_at is not None and changed:
            self._observer.converged(written_at - event_at)
        return changed
