"""A fan-out reaches exactly the sessions its policies' ``match`` selects, in a fleet whose
sessions alternate between label sets (the fan-out remembers the last selector decision per
kind/model/labels key: a change of key must be decided afresh), and a label change of one
session is seen by the next event."""

from __future__ import annotations

import json
from typing import Any

from controlplane.config import Settings
from controlplane.push.engine import PushEngine
from controlplane.push.live import LiveSession
from controlplane.push.protocol import Push, PushState
from policies.model import Policy, parse_policy
from sessions.clock import FakeClock
from sessions.dialects import dialect_for
from sessions.model import Session
from sessions.registry import MemoryRegistry
from sessions.versionlog.memory import MemoryVersionLog


class _Frames:
    acknowledging = False

    def __init__(self, got: list[str]) -> None:
        self.got = got

    def congested(self) -> bool:
        return False

    async def write(self, push: Push, wire: dict[str, Any], text: str) -> None:
        self.got.append(json.loads(text)["prompt"])


def _policy(version: int, tenant: str) -> Policy:
    return parse_policy({"id": "p", "version": version, "match": {"labels": {"tenant": [tenant]}},
                         "set": {"prompt": f"v{version}"}})  # fmt: skip


async def test_only_the_selected_sessions_of_a_mixed_fleet_get_the_push() -> None:
    clock = FakeClock()
    engine = PushEngine(settings=Settings(fanout_quiet_s=0.0), clock=clock,
                        versionlog=MemoryVersionLog(clock, flush_interval_s=None),
                        registry=MemoryRegistry(clock))  # fmt: skip
    frames: dict[str, list[str]] = {}
    tenants = ["b", "a", "a", "b", "a", "b", "c", "a"]  # runs of one key, then changes
    try:
        for i, tenant in enumerate(tenants):
            session = Session(id=f"s{i}", kind="streaming-v3", model="u3-rt-pro",
                              labels={"tenant": tenant}, client_config={})  # fmt: skip
            frames[session.id] = []
            push = PushState.start(acknowledging=False, config={}, refs=(), version=1)
            ls = LiveSession(session=session, push=push, dialect=dialect_for("streaming-v3"),
                             transport=_Frames(frames[session.id]))  # fmt: skip
            engine.attach(ls, engine.resolve(session, []))
            engine.mark_ready(ls)
        v1 = _policy(1, "a")
        reached = await engine.reconcile(engine.live.values(), [v1], cause="policy", relevant=[v1])
        assert reached == tenants.count("a")
        assert {sid: f for sid, f in frames.items() if f} == {
            f"s{i}": ["v1"] for i, t in enumerate(tenants) if t == "a"
        }
        # s0 moves to tenant a (labels are replaced, never changed in place)
        engine.live["s0"].session.labels = {"tenant": "a"}
        v2 = _policy(2, "a")
        reached = await engine.reconcile(
            engine.live.values(), [v2], cause="policy", relevant=[v1, v2]
        )
        assert reached == tenants.count("a") + 1
        assert frames["s0"] == ["v2"]
        assert all(frames[f"s{i}"] == [] for i, t in enumerate(tenants) if t != "a" and i != 0)
    finally:
        await engine.close()
