"""Policy fan-outs: every targeted session re-resolved, then its new version logged and
written, coalesced fleet-wide.

A fan-out has two steps. **Marking** (``run``, one plain loop without an await): resolve
(a per-fan-out ``Resolver``), ``PushState.want``, the rollout bookkeeping, an ``unchanged``
entry where only the policy versions in effect changed. **Walking** (one walker task per
engine): take each marked session's push, append its ``sent`` entry (``Pusher.queue``) and
write the frames once their entries are durable, pipelined (``write_ahead``). DESIGN.md §6:
no task per session per push.

Coalescing (``coalescing``): the walker takes sessions from one queue. A newer version that
arrives while a walk is in progress (or queued) marks its sessions at once; those the walk
has not reached yet keep their place and get only the newest (``PushState`` is latest-wins:
the older version is never sent and has no entry for them; ``coalesced_total`` counts it),
those already reached go to the back for one more frame. Optional debounce (a burst of one
policy's events becomes one walk of the newest) and pacing (frames per second per replica)
are off the path of an isolated event: it is walked at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from controlplane.push.coalescing import Debounce, FanOutQueue, Pacer
from controlplane.push.frames import FrameCache
from controlplane.push.live import LiveSession
from controlplane.push.observer import PushObserver
from controlplane.push.recording import Recorder
from controlplane.push.rollout_status import update_policy_status
from controlplane.push.write_ahead import POLL, Outgoing, WriteAhead
from policies.model import Match, Policy
from policies.resolve import Effective, Resolver
from policies.selectors import Target, matches
from sessions.clock import Clock
from sessions.versionlog.core import VersionLog

__all__ = ["FanOut", "Pusher"]

log = logging.getLogger(__name__)


class Pusher(Protocol):
    """What a fan-out asks of the push engine, per session."""

    @property
    def live(self) -> Mapping[str, LiveSession]: ...

    def adopt(self, ls: LiveSession, effective: Effective, sync: bool) -> None:
        """The session's new resolution (its record; synced unless ``sync`` is False)."""

    def queue(self, ls: LiveSession, cache: FrameCache, outgoing: list[Outgoing]) -> bool:
        """Take and log the push due now, its frame on ``outgoing``; True when taken."""

    def sync_session(self, ls: LiveSession) -> None:
        """The session's push state changed: its record and timers follow."""

    async def send_frames(self, outgoing: list[Outgoing]) -> None:
        """Write the frames of logged pushes whose entries are durable."""

    def refuse(self, outgoing: list[Outgoing], error: Exception) -> None:
        """Logged pushes whose entries could not be made durable: not sent, each ended."""

    def flush_metrics(self) -> None: ...


@dataclass(slots=True)
class _Ticket:
    """A fan-out waiting for the walk: done once the queue's ``taken`` reaches ``upto``."""

    upto: int
    event_at: float | None  # convergence (event -> last of its sessions written)
    done: asyncio.Future[None] | None  # the caller waiting (None: nobody waits)
    key: tuple[str, ...] | None = None  # its policies (the debounce's quiet period restarts)


Select = Callable[[Target], bool]


@dataclass(frozen=True, slots=True)
class _Marking:
    """One event's resolution of the sessions it targets."""

    generation: int  # events are numbered in the order they are handled
    resolver: Resolver
    selects: tuple[Select | None, tuple[Select, ...] | None]  # (the only one, or all)
    cause: str
    event_at: float | None
    next_turn: tuple[str, float] | None
    now: float
    sync: bool  # the session's record follows now (held: its walk comes later)
    # the last selector key and whether it is selected: sessions with the same kind, model
    # and labels share one interned key (``Inputs.key``), and a fan-out's targets mostly do
    selected: list[object] = field(default_factory=lambda: [None, False])


def _selectors(relevant: list[Policy] | None) -> tuple[Select | None, tuple[Select, ...] | None]:
    """Only sessions that one of these policies' ``match`` selects (the versions before and
    after a change); None: every session."""
    if relevant is None:
        return None, None
    distinct: list[Match] = []  # a new version usually keeps its predecessor's match
    for p in relevant:
        if p.match not in distinct:
            distinct.append(p.match)
    selects = tuple(partial(matches, m) for m in distinct)
    return (selects[0] if len(selects) == 1 else None), selects


@dataclass(slots=True)
class _Held:
    """Sessions marked by events the debounce holds (one policy)."""

    since: float
    sessions: list[LiveSession] = field(default_factory=list)
    events_at: list[float | None] = field(default_factory=list)


class FanOut:
    def __init__(
        self,
        pusher: Pusher,
        *,
        clock: Clock,
        versionlog: VersionLog,
        recorder: Recorder,
        observer: PushObserver,
        quiet_s: float = 0.0,
        max_delay_s: float = 0.0,
        frames_per_s: float = 0.0,
    ) -> None:
        self._pusher = pusher
        self._clock = clock
        self._log = versionlog
        self._recorder = recorder
        self._observer = observer
        self._queue: FanOutQueue[LiveSession] = FanOutQueue()
        self._debounce: Debounce[tuple[str, ...]] = Debounce(quiet_s, max_delay_s)
        self._pacer = Pacer(frames_per_s)
        self._held: dict[tuple[str, ...], _Held] = {}
        self._tickets: deque[_Ticket] = deque()
        self._walker: asyncio.Task[None] | None = None
        self._releaser: asyncio.Task[None] | None = None
        self._fused = False  # an isolated fan-out is walked by its caller (_walk_now)
        self._closing = False
        self.generation = 0  # of the last event marked (LiveSession.marked)

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
        """``PushEngine.reconcile``: marks the sessions, then waits until the walk wrote
        them, unless the debounce holds the event or pacing is on (then they are queued).
        Returns how many sessions got a new version.

        Several calls for one event (one per group of sessions with their own policy set)
        carry the same ``event_at`` (when it was received): the debounce treats them as one.
        """
        relevant = None if relevant is None else list(relevant)
        now = self._clock.monotonic()
        self.generation += 1
        key = None if relevant is None else tuple(sorted({p.id for p in relevant}))
        held = key is not None and self._debounce.arrive(key, now, event_at)
        marking = _Marking(
            self.generation, Resolver(policies), _selectors(relevant), cause, event_at,
            next_turn, now, sync=held,
        )  # fmt: skip
        if held:
            self._start_releaser()  # (even when it changes nothing here: the hold must end)
        elif not self._pacer.paced and self._walker is None and not self._fused:
            return await self._walk_now(sessions, marking, key)
        changed: list[LiveSession] = []
        # A fan-out allocates per session; a collection in the middle of it showed up as 40 %
        # of the fan-out time in profiles (docs/benchmarks.md). Collect after, not during.
        collecting = gc.isenabled()
        gc.disable()
        try:
            for ls in list(sessions):
                if self._mark(ls, marking):
                    changed.append(ls)
        finally:
            if collecting:
                gc.enable()
        if not changed:
            self._pusher.flush_metrics()
            return 0
        if held:
            assert key is not None
            hold = self._held.get(key)
            if hold is None:
                hold = self._held[key] = _Held(now)
            hold.sessions += changed
            if not hold.events_at or hold.events_at[-1] != event_at:  # (one per event)
                hold.events_at.append(event_at)
                self._observer.fanout("debounced")
            return len(changed)
        self._observer.fanout("joined" if self._walker or self._fused else "immediate")
        upto = self._queue.add(changed)
        done = None if self._pacer.paced else asyncio.get_running_loop().create_future()
        self._tickets.append(_Ticket(upto, event_at, done, key))
        self._start_walker()
        if done is not None:
            await done
        return len(changed)

    async def _walk_now(
        self, sessions: Iterable[LiveSession], marking: _Marking, key: tuple[str, ...] | None
    ) -> int:
        """An isolated fan-out, walked as it is marked: each session's push is taken and
        logged right after its resolution, the frames of each chunk written once its entries
        are durable (pipelined, as before coalescing: the first frames leave while later
        sessions are still resolved). A newer event marking sessions meanwhile (at one of
        the awaits) wins: its sessions are skipped here and walked by the walker after."""
        pusher = self._pusher
        self._fused = True
        self._observer.fanout("immediate")
        changed = 0
        cache: FrameCache = {}
        ahead = WriteAhead(self._log, pusher.send_frames, pusher.refuse)
        outgoing = ahead.outgoing  # logged; each sent once its entry is durable
        written_at = None
        collecting = gc.isenabled()
        gc.disable()
        try:
            for ls in list(sessions):
                if not self._mark(ls, marking):
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
                outgoing.clear()  # (freed before the collector runs again: not traversed)
                if collecting:
                    gc.enable()
                pusher.flush_metrics()
                self._fused = False
                if self._queue:
                    self._start_walker()  # sessions a newer event marked meanwhile
        if key is not None:
            self._debounce.settled(key, written_at)
        if marking.event_at is not None and changed:
            self._observer.converged(written_at - marking.event_at)
        return changed

    def _mark(self, ls: LiveSession, m: _Marking) -> bool:
        """Resolve one session if the event targets it and note its new version (no await);
        True when it has a new version to write. A session resolved by a newer event
        meanwhile (``LiveSession.marked``) is left to that one."""
        s = ls.session
        if not ls.attached or ls.marked > m.generation:  # (attached: the engine holds it)
            return False
        inputs = ls.inputs()
        select_one, selects = m.selects
        if selects is not None:  # (selectors read kind, model and labels only: Inputs.key)
            memo, key = m.selected, inputs.key
            if memo[0] is not key:
                memo[0] = key
                memo[1] = (
                    select_one(inputs.target)
                    if select_one is not None
                    else any(sel(inputs.target) for sel in selects)
                )
            if not memo[1]:
                return False
        ls.marked = m.generation
        effective = m.resolver.resolve_inputs(inputs)
        hold, next_turn = None, m.next_turn
        if next_turn is not None and any(r.id == next_turn[0] for r in effective.applied):
            hold = m.now + next_turn[1]
        elif next_turn is not None and next_turn[0] in ls.policy_status:
            hold = m.now + next_turn[1]  # retired / no longer targeted: revert on the turn
        # (positional: one call per session of a fan-out)
        version = ls.push.want(effective.config, effective.applied, m.cause, hold, m.event_at)
        before = s.applied
        # a session walked at once is synced once, by its push (not twice)
        self._pusher.adopt(ls, effective, m.sync or version is None)
        update_policy_status(ls, effective, version is not None)
        if version is None:
            if effective.applied is not before and effective.applied != before:
                self._recorder.unchanged(ls, m.cause, effective.applied)
            return False
        return True

    # -- the walk --------------------------------------------------------------------------
    def _start_walker(self) -> None:
        if self._walker is None and not self._fused and not self._closing:
            loop = asyncio.get_running_loop()
            self._walker = loop.create_task(self._walk(), name="push-fanout-walker")

    async def _walk(self) -> None:
        try:
            while self._queue and not self._closing:
                if not await self._segment():  # paced: no frame may go yet
                    await asyncio.sleep(self._pacer.wait_s(len(self._queue)))
        finally:
            self._walker = None
            if self._closing:
                self._settle(None, None)

    async def _segment(self) -> bool:
        """Walk the sessions queued now (paced: as many as may go now); False when none
        may go yet."""
        pusher, queue, pacer = self._pusher, self._queue, self._pacer
        n = len(queue)
        if pacer.paced:
            n = min(n, pacer.available(self._clock.monotonic()))
            if n <= 0:
                return False
        cache: FrameCache = {}
        ahead = WriteAhead(self._log, pusher.send_frames, pusher.refuse)
        outgoing = ahead.outgoing  # logged; each sent once its entry is durable
        error: Exception | None = None
        collecting = gc.isenabled()
        gc.disable()
        try:
            try:
                for _ in range(n):
                    ls = queue.pop()
                    if ls is None:
                        break
                    if not ls.attached:
                        continue  # ended while an earlier chunk's frames were written
                    if not pusher.queue(ls, cache, outgoing):
                        pusher.sync_session(ls)
                    elif len(outgoing) % POLL == 0:
                        await ahead.step()
            finally:
                await ahead.finish()
        except Exception as exc:  # the callers waiting get it (the event counts an error)
            error = exc
        finally:
            sent = len(outgoing)
            outgoing.clear()  # (freed before the collector runs again: not traversed)
            if collecting:
                gc.enable()
            pacer.spend(sent)
            pusher.flush_metrics()
        self._settle(self._clock.monotonic(), error)
        return True

    def _settle(self, written_at: float | None, error: Exception | None) -> None:
        """Fan-outs whose sessions the walk has all reached are done (on close: all)."""
        tickets, taken = self._tickets, self._queue.taken
        told = False
        while tickets and (written_at is None or tickets[0].upto <= taken):
            ticket = tickets.popleft()
            if written_at is not None and ticket.key is not None:
                self._debounce.settled(ticket.key, written_at)
            if written_at is not None and ticket.event_at is not None and error is None:
                self._observer.converged(written_at - ticket.event_at)
            done = ticket.done
            if done is not None and not done.done():
                if error is not None:
                    done.set_exception(error)
                    told = True
                else:
                    done.set_result(None)
        if error is not None and not told:
            log.error("policy fan-out failed", exc_info=error)

    # -- the debounce ----------------------------------------------------------------------
    def _start_releaser(self) -> None:
        if self._releaser is None and not self._closing:
            loop = asyncio.get_running_loop()
            self._releaser = loop.create_task(self._release(), name="push-fanout-debounce")

    async def _release(self) -> None:
        """Queue the held fan-outs as their holds end."""
        debounce = self._debounce
        try:
            while (at := debounce.next_release()) is not None:
                await asyncio.sleep(max(0.0, at - self._clock.monotonic()))
                now = self._clock.monotonic()
                for key, events in debounce.due(now):
                    held = self._held.pop(key, None)
                    if held is None:
                        continue
                    self._observer.fanout_held(now - held.since)
                    if events > 1:
                        self._observer.fanouts_coalesced(events - 1)
                    upto = self._queue.add(held.sessions)
                    self._tickets.extend(_Ticket(upto, at, None, key) for at in held.events_at)
                    self._start_walker()
                debounce.forget_idle(now)
        finally:
            self._releaser = None

    async def close(self) -> None:
        self._closing = True
        for task in (self._releaser, self._walker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._settle(None, None)
        self._held.clear()
