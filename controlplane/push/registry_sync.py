"""The live sessions' records in the session registry, written in batches off the push path
(DESIGN.md §6: never a registry round trip per session per push).

``RegistrySync`` keeps the sessions whose record changed (``mark``) and the registry ``end``s
that failed; ``flush`` writes them (one ``update_many``), re-registers sessions the registry
lost while this replica still holds them, and retries the ends until they land; ``close`` is
the last flush, naming the ends that never landed.

``tick`` is the periodic sync (every ``REGISTRY_SYNC_INTERVAL_S`` from the engine): it
writes once the sessions stopped changing for a tick, holding the batch at most
``HOLD_TICKS`` ticks while changes keep coming, so a fan-out (its pushes, then its
acknowledgements over the next few hundred milliseconds) is one batch instead of one per tick
while it lasts: the Redis work of a publish does not grow with the time its fan-out takes, i.e.
with the sessions (issue #23, ``loadtest/bench_cluster.py``). The registry lags a change by at
most ``HOLD_TICKS + 1`` ticks (1 s); nothing on the push path reads it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Final

from controlplane.push.live import LiveSession
from sessions.errors import UnknownSession
from sessions.registry import Registry

__all__ = ["HOLD_TICKS", "RegistrySync"]

log = logging.getLogger(__name__)

HOLD_TICKS: Final = 3  # ticks a batch may wait while its sessions keep changing


class RegistrySync:
    __slots__ = ("_dirty", "_ends", "_failing", "_held", "_marks", "_registry", "_seen",
                 "registering")  # fmt: skip

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._dirty: set[LiveSession] = set()
        # ids attached here whose registry.register (the claim) is still in flight: a sync
        # that finds them missing must not register them behind it (the claim would then
        # refuse the session its own id: seen in a 600-session storm, issue #19)
        self.registering: set[str] = set()
        self._ends: dict[str, tuple[str, float]] = {}  # registry ends to retry: id -> cause, at
        self._failing = False
        self._marks = 0  # marks so far, and as many as the last tick had seen
        self._seen = 0
        self._held = 0  # ticks the current batch has waited

    def mark(self, ls: LiveSession) -> None:
        """The session's record changed: written by a coming tick (or flush)."""
        self._dirty.add(ls)
        self._marks += 1

    def mark_all(self, sessions: Iterable[LiveSession]) -> None:
        self._dirty.update(sessions)
        self._marks += 1

    async def tick(self, live: Mapping[str, LiveSession]) -> None:
        """The periodic sync (module docstring): a flush, unless sessions changed since the
        last tick and the batch has waited fewer than ``HOLD_TICKS`` ticks."""
        if self._marks != self._seen:
            self._seen = self._marks
            if self._held < HOLD_TICKS:
                self._held += 1
                await self._retry_ends()
                return
        self._held = 0
        await self.flush(live)

    def forget(self, ls: LiveSession) -> None:
        self._dirty.discard(ls)

    def pending(self, ls: LiveSession) -> bool:
        """Whether the registry has yet to learn a change of this session."""
        return ls in self._dirty

    def end_later(self, session_id: str, cause: str, at: float) -> None:
        """A registry ``end`` that failed: retried by ``flush`` until it lands."""
        self._ends[session_id] = (cause, at)

    async def flush(self, live: Mapping[str, LiveSession]) -> None:
        """Write every changed session now, then retry the ends."""
        await self._flush_dirty(live)
        await self._retry_ends()

    async def close(self, live: Mapping[str, LiveSession]) -> None:
        """The last flush (the engine's close); the ends that still failed are logged by id:
        those sessions stay live in the registry until another replica's node-lost sweep."""
        await self.flush(live)
        if self._ends:
            ids = sorted(self._ends)
            log.error("%d session end(s) could not be written to the registry (left to the "
                      "node-lost sweep of another replica): %s%s", len(ids),
                      ", ".join(ids[:20]), " ..." if len(ids) > 20 else "")  # fmt: skip

    async def _retry_ends(self) -> None:
        """The first failed end alone (a registry still down costs one attempt per sync),
        then, once it lands, all the others at once: the registry group-commits concurrent
        ends (``RedisRegistry``: one transaction per batch), where one at a time was a
        transaction per session after an outage with thousands queued."""
        if not self._ends:
            return
        first, *rest = self._ends.items()
        if await self._end(*first) and rest:
            await asyncio.gather(*(self._end(*item) for item in rest))

    async def _end(self, session_id: str, ended: tuple[str, float]) -> bool:
        """One queued end; True when it landed (or there was nothing left to end)."""
        cause, at = ended
        try:
            await self._registry.end(session_id, cause=cause, at=at)
        except UnknownSession:
            pass  # the registry lost it meanwhile: nothing left to end
        except Exception:
            return False  # still failing: the next sync tries again
        if self._ends.get(session_id) == ended:  # (not one queued again meanwhile)
            del self._ends[session_id]
        return True

    async def _flush_dirty(self, live: Mapping[str, LiveSession]) -> None:
        if not self._dirty:
            return
        dirty = list(self._dirty)
        batch = [ls.session for ls in dirty]
        self._dirty.clear()
        # registering when the batch left, or still: a skip may be the claim not stored yet
        # (one that landed during the update is not lost: seen as "re-registered N" in storms)
        claiming = {s.id for s in batch if s.id in self.registering}
        try:
            skipped = await self._registry.update_many(batch)
            lost = [live[sid] for sid in skipped if sid in live]
            pending = claiming | self.registering
            waiting = [ls for ls in lost if ls.session.id in pending]
            self._dirty.update(waiting)  # written once their registration is done
            lost = [ls for ls in lost if ls.session.id not in pending]
            if lost:  # still held here: the registry's record is what is wrong
                taken = await self._registry.register_many([ls.session for ls in lost])
                log.warning("re-registered %d live session(s) the registry had lost or ended",
                            len(lost) - len(taken))  # fmt: skip
                if taken:  # another node claimed the id meanwhile: it holds the trail now
                    log.error("session id(s) now held by another node, not re-registered: %s",
                              ", ".join(taken[:20]))  # fmt: skip
        except Exception as exc:
            if not self._failing:  # once per outage, not every sync
                log.warning("registry update of %d sessions failed; retrying: %s", len(batch), exc)
            self._failing = True
            # still live (the same socket): written by the next sync. O(batch), not a scan of
            # every live session comparing records (a Redis outage at 50,000 sessions)
            self._dirty.update(ls for ls in dirty if live.get(ls.session.id) is ls)
        else:
            if self._failing:
                log.info("registry sync recovered")
            self._failing = False
