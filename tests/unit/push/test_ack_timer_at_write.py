"""The acknowledgement timer of a push starts when its frame is written, not when it is
taken: under a burst the write-ahead commit before the frames can take longer than
``ack_timeout_s``, and a push timed out during that commit was recorded ``unverified`` and
its frame never written (the app never got its config; found by loadtest/bench_reconnect.py
at 10,000 control-channel sessions registering at once)."""

from __future__ import annotations

import asyncio
from typing import Any

from controlplane.config import Settings
from controlplane.push.engine import PushEngine
from controlplane.push.live import LiveSession
from controlplane.push.protocol import Push, PushState
from policies.provenance import PolicyRef
from sessions.clock import FakeClock
from sessions.dialects import dialect_for
from sessions.model import Session
from sessions.registry import MemoryRegistry
from sessions.versionlog.memory import MemoryVersionLog

ACK_TIMEOUT_S = 5.0


class _SlowCommitLog(MemoryVersionLog):
    """An in-memory log whose commits wait until the test opens ``gate``."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock, flush_interval_s=None)
        self.gate = asyncio.Event()
        self.committing = asyncio.Event()

    async def flush(self) -> None:
        self.committing.set()
        await self.gate.wait()
        await super().flush()


class _Transport:
    acknowledging = True

    def __init__(self) -> None:
        self.written: list[dict[str, Any]] = []

    def congested(self) -> bool:
        return False

    async def write(self, push: Push, wire: dict[str, Any], text: str) -> None:
        self.written.append(wire)


async def test_a_commit_slower_than_the_ack_timeout_still_writes_the_frame_and_times_from_it() -> (
    None
):
    clock = FakeClock()
    log = _SlowCommitLog(clock)
    registry = MemoryRegistry(clock)
    engine = PushEngine(settings=Settings(ack_timeout_s=ACK_TIMEOUT_S), clock=clock,
                        versionlog=log, registry=registry)  # fmt: skip
    await engine.start()
    try:
        session = Session(id="s1", kind="voice-agent-v1", model="voice-agent", labels={},
                          client_config={})  # fmt: skip
        transport = _Transport()
        ls = LiveSession(session=session,
                         push=PushState.start(acknowledging=True, config={}, refs=(), version=1),
                         transport=transport, dialect=dialect_for("voice-agent-v1"))  # fmt: skip
        await registry.register(session)
        engine.attach(ls, engine.resolve(session, []))
        engine.mark_ready(ls)  # the upstream session is ready: pushes may go
        ls.push.want({"prompt": "be brief"}, (PolicyRef("p", 1),), "policy",
                     event_at=clock.monotonic())  # fmt: skip
        drive = asyncio.create_task(engine.kick(ls))
        await asyncio.wait_for(log.committing.wait(), 5)
        clock.advance(ACK_TIMEOUT_S * 3)  # the commit outlasts the acknowledgement timeout
        await asyncio.sleep(0.2)  # the sweeper runs several times meanwhile
        assert ls.push.in_flight is not None, "the push was ended before its frame was written"
        log.gate.set()
        await asyncio.wait_for(drive, 5)
        assert len(transport.written) == 1, "the logged push's frame was never written"
        await asyncio.sleep(0.2)
        assert ls.push.in_flight is not None, "timed out at once: the timer ran from the take"
        clock.advance(ACK_TIMEOUT_S + 1)  # no answer within the timeout after the write
        for _ in range(50):  # the log's own entries, not the push state that precedes them
            await asyncio.sleep(0.05)
            statuses = [e.status for e in await log.entries("s1")]
            if statuses[-1:] != ["sent"]:
                break
        assert statuses[-2:] == ["sent", "unverified"], statuses
    finally:
        log.gate.set()
        await engine.close()
