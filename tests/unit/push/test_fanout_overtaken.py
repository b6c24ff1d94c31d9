"""A fan-out overtaken by a newer event while its first frames are being written: the sessions
it had not reached are left to the newer event (never resolved back to the older policy set
after it), get only the newest version, and every session ends on the newest.

A real ``PushEngine`` over an in-memory version log whose writes are done at once (so the
first chunk's frames go while the fan-out is still walking) and a transport that holds the
first frame until the test lets it go: the newer event arrives exactly then."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from typing import Any

from controlplane.config import Settings
from controlplane.push.engine import PushEngine
from controlplane.push.live import LiveSession
from controlplane.push.protocol import Push, PushState
from controlplane.push.write_ahead import CHUNK
from policies.model import Policy, parse_policy
from sessions.clock import FakeClock
from sessions.dialects import dialect_for
from sessions.model import Session
from sessions.registry import MemoryRegistry
from sessions.versionlog.core import Submitted
from sessions.versionlog.memory import MemoryVersionLog

SESSIONS = CHUNK + 44  # the fan-out yields after its first chunk, with 44 sessions to go


class _InstantLog(MemoryVersionLog):
    """A write is done as soon as it is submitted (the entries stay in memory)."""

    def submit(self) -> Submitted | None:
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        done.set_result(None)
        return done


class _Held:
    """Streaming v3 (no acknowledgement): records each frame; the very first one waits."""

    acknowledging = False

    def __init__(self, session_id: str, frames: dict[str, list[str]], gate: asyncio.Event):
        self.session_id, self.frames, self.gate = session_id, frames, gate

    def congested(self) -> bool:
        return False

    async def write(self, push: Push, wire: dict[str, Any], text: str) -> None:
        if not any(self.frames.values()):
            self.frames[self.session_id].append("(waiting)")
            await self.gate.wait()
            self.frames[self.session_id].pop()
        self.frames[self.session_id].append(json.loads(text)["prompt"])


def _policy(version: int) -> Policy:
    return parse_policy({"id": "p", "version": version, "match": {},
                         "set": {"prompt": f"v{version}"}})  # fmt: skip


async def test_sessions_a_fan_out_had_not_reached_get_only_the_newer_event() -> None:
    clock = FakeClock()
    engine = PushEngine(settings=Settings(fanout_quiet_s=0.0), clock=clock,
                        versionlog=_InstantLog(clock, flush_interval_s=None),
                        registry=MemoryRegistry(clock))  # fmt: skip
    frames: dict[str, list[str]] = {}
    gate = asyncio.Event()
    try:
        for i in range(SESSIONS):
            session = Session(id=f"s{i:03d}", kind="streaming-v3", model="u3-rt-pro",
                              labels={}, client_config={})  # fmt: skip
            frames[session.id] = []
            push = PushState.start(acknowledging=False, config={}, refs=(), version=1)
            ls = LiveSession(session=session, push=push, dialect=dialect_for("streaming-v3"),
                             transport=_Held(session.id, frames, gate))  # fmt: skip
            engine.attach(ls, engine.resolve(session, []))
            engine.mark_ready(ls)
        v1, v2 = _policy(1), _policy(2)
        first = asyncio.create_task(
            engine.reconcile(
                engine.live.values(),
                [v1],
                cause="policy",
                event_at=clock.monotonic(),
                relevant=[v1],
            )
        )
        while not any(frames.values()):  # the first chunk's first frame is being written
            await asyncio.sleep(0)
        second = asyncio.create_task(
            engine.reconcile(
                engine.live.values(),
                [v2],
                cause="policy",
                event_at=clock.monotonic(),
                relevant=[v1, v2],
            )
        )
        await asyncio.sleep(0)
        gate.set()
        assert await first == CHUNK  # it reached only its first chunk
        assert await second == SESSIONS
        reached = [f for f in frames.values() if f[0] == "v1"]
        assert len(reached) == CHUNK and all(f == ["v1", "v2"] for f in reached)
        not_reached = [f for f in frames.values() if f[0] != "v1"]
        assert len(not_reached) == SESSIONS - CHUNK and all(f == ["v2"] for f in not_reached)
        assert all(ls.session.effective_config == {"prompt": "v2"} for ls in engine.live.values())
    finally:
        gate.set()
        await engine.close()
