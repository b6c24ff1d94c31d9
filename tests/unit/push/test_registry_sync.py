"""``RegistrySync.tick``, the engine's periodic registry sync: one batch per burst of changes
(a fan-out's pushes, then its acknowledgements), not one per tick while the burst lasts (issue
#23: the Redis work of a publish must not grow with the time its fan-out takes), held at most
``HOLD_TICKS`` ticks; ``flush`` writes at once (the engine's close)."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Iterable
from typing import Any

from controlplane.push.live import LiveSession
from controlplane.push.protocol import Push, PushState
from controlplane.push.registry_sync import HOLD_TICKS, RegistrySync
from sessions.clock import FakeClock
from sessions.dialects import dialect_for
from sessions.model import Session
from sessions.registry import MemoryRegistry


class _Transport:
    acknowledging = True

    def congested(self) -> bool:
        return False

    async def write(self, push: Push, wire: dict[str, Any], text: str) -> None:
        raise AssertionError("not written in these tests")


class CountingRegistry(MemoryRegistry):
    """The in-memory registry, counting the batches it is given."""

    def __init__(self) -> None:
        super().__init__(FakeClock())
        self.batches: list[list[str]] = []

    async def update_many(self, sessions: Iterable[Session]) -> builtins.list[str]:
        batch = list(sessions)
        self.batches.append(sorted(s.id for s in batch))
        return await super().update_many(batch)


async def _live(registry: CountingRegistry, n: int) -> dict[str, LiveSession]:
    live = {}
    for i in range(n):
        session = Session(id=f"s{i}", kind="streaming-v3", model="u3-rt-pro", node="n1")
        await registry.register(session)
        push = PushState.start(acknowledging=True, config={}, refs=(), version=1)
        live[session.id] = LiveSession(session=session, push=push, transport=_Transport(),
                                       dialect=dialect_for("streaming-v3"))  # fmt: skip
    return live


async def test_a_burst_of_changes_over_several_ticks_is_written_in_one_batch() -> None:
    registry = CountingRegistry()
    live = await _live(registry, 6)
    sync = RegistrySync(registry)
    sessions = list(live.values())
    for ls in sessions[:3]:  # the fan-out's pushes ...
        ls.session.sent_version = 2
        sync.mark(ls)
    await sync.tick(live)
    for ls in sessions[3:]:  # ... its acknowledgements, arriving over the next tick
        ls.session.acked_version = 2
        sync.mark(ls)
    await sync.tick(live)
    assert registry.batches == []  # still changing: held
    await sync.tick(live)  # a quiet tick: the whole burst in one batch
    assert registry.batches == [[f"s{i}" for i in range(6)]]
    assert (await registry.get("s0")).sent_version == 2
    assert (await registry.get("s5")).acked_version == 2
    await sync.tick(live)
    assert len(registry.batches) == 1  # nothing left to write


async def test_changes_that_never_stop_are_written_every_hold_ticks_plus_one() -> None:
    registry = CountingRegistry()
    live = await _live(registry, 1)
    sync = RegistrySync(registry)
    (ls,) = live.values()
    for _ in range(2 * (HOLD_TICKS + 1)):
        sync.mark(ls)
        await sync.tick(live)
    assert len(registry.batches) == 2


async def test_flush_writes_at_once() -> None:
    registry = CountingRegistry()
    live = await _live(registry, 2)
    sync = RegistrySync(registry)
    for ls in live.values():
        sync.mark(ls)
    await sync.flush(live)
    assert registry.batches == [["s0", "s1"]]
    assert not any(sync.pending(ls) for ls in live.values())


class RegisteringDuringUpdate(CountingRegistry):
    """A session's registration lands while a batch naming it is being written."""

    def __init__(self, sync_of: list[RegistrySync], session: Session) -> None:
        super().__init__()
        self._sync_of, self._late = sync_of, session
        self.rewritten: list[str] = []

    async def update_many(self, sessions: Iterable[Session]) -> builtins.list[str]:
        skipped = await super().update_many(sessions)  # not registered yet: skipped
        if self._late.id in self._sync_of[0].registering:
            await self.register(self._late)  # ... and now it is
            self._sync_of[0].registering.discard(self._late.id)
        return skipped

    async def register_many(self, sessions: Iterable[Session]) -> builtins.list[str]:
        self.rewritten += [s.id for s in sessions]
        return await super().register_many(sessions)


async def test_a_registration_landing_during_a_batch_is_not_taken_for_a_lost_session() -> None:
    late = Session(id="late", kind="streaming-v3", model="u3-rt-pro", node="n1")
    holder: list[RegistrySync] = []
    registry = RegisteringDuringUpdate(holder, late)
    sync = RegistrySync(registry)
    holder.append(sync)
    push = PushState.start(acknowledging=True, config={}, refs=(), version=1)
    ls = LiveSession(session=late, push=push, transport=_Transport(),
                     dialect=dialect_for("streaming-v3"))  # fmt: skip
    live = {"late": ls}
    sync.registering.add("late")
    sync.mark(ls)
    await sync.flush(live)
    assert registry.rewritten == []  # not re-registered behind its own registration
    assert sync.pending(ls)  # written by the next batch instead
    await sync.flush(live)
    assert registry.batches[-1] == ["late"] and not sync.pending(ls)


class FailingOnce(CountingRegistry):
    """The registry is unreachable for one batch (a Redis outage), then answers."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    async def update_many(self, sessions: Iterable[Session]) -> builtins.list[str]:
        batch = list(sessions)
        if self.down:
            self.down = False
            self.batches.append(sorted(s.id for s in batch))
            raise ConnectionError("registry unreachable")
        return await super().update_many(batch)


async def test_a_failed_batch_is_retried_for_the_sessions_still_live_here() -> None:
    registry = FailingOnce()
    live = await _live(registry, 3)
    sync = RegistrySync(registry)
    for ls in live.values():
        sync.mark(ls)
    ended = live.pop("s1")  # the session ends while its batch fails: nothing left to write
    await sync.flush(live)  # fails: the live sessions stay pending
    assert [sync.pending(ls) for ls in live.values()] == [True, True]
    assert not sync.pending(ended)
    await sync.flush(live)
    assert registry.batches == [["s0", "s1", "s2"], ["s0", "s2"]]
    assert not any(sync.pending(ls) for ls in live.values())


class EndsRegistry(MemoryRegistry):
    """The in-memory registry whose ``end`` yields once (as a network call does), noting how
    many ends were in flight at once; ``down`` makes every end fail."""

    def __init__(self) -> None:
        super().__init__(FakeClock())
        self.down = False
        self.attempts = 0
        self.in_flight = 0
        self.most_in_flight = 0

    async def end(self, session_id: str, *, cause: str, at: float) -> Session:
        self.attempts += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)
            if self.down:
                raise ConnectionError("registry unreachable")
            return await super().end(session_id, cause=cause, at=at)
        finally:
            self.in_flight -= 1


async def test_failed_ends_are_retried_one_attempt_per_sync_while_down_then_all_at_once() -> None:
    registry = EndsRegistry()
    live = await _live(registry, 40)
    sync = RegistrySync(registry)
    for sid in live:
        sync.end_later(sid, "client_closed", 1.0)
    registry.down = True
    await sync.tick({})
    await sync.tick({})
    assert registry.attempts == 2  # one attempt per sync while the registry is down
    registry.down = False
    await sync.tick({})
    assert registry.attempts == 2 + 40  # every queued end, once
    assert registry.most_in_flight == 39  # the first alone, then the rest together
    for sid in live:
        assert (await registry.get(sid)).state.value == "ended"
    await sync.tick({})
    assert registry.attempts == 42  # nothing left to retry
