"""Issue 8 acceptance: guarded rollouts on the real service (gateway + emulator, control
channel), with the deployment's default guard (more than 1 % of at least 50 targeted
sessions failing within 300 s halts the version)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from controlplane.app import SERVICE, build_app
from controlplane.config import Settings
from tests.integration.service.conftest import (
    ControlPlaneUnderTest,
    Emulator,
    _serve,
    eventually,
)
from tests.integration.service.fleet import Fleet, metric

HALTS = "controlplane_rollout_halts_total"


@pytest.fixture
async def fleet(cp: ControlPlaneUnderTest) -> AsyncIterator[Fleet]:
    f = Fleet(cp.ws_base)
    try:
        yield f
    finally:
        await f.close()


@pytest.fixture
async def quick_cp(cp_settings: Callable[..., Settings]) -> AsyncIterator[ControlPlaneUnderTest]:
    """A control plane whose acknowledgement timeout is 1 s (timeouts are failures too)."""
    settings = cp_settings(ack_timeout_s=1.0)
    app = build_app(settings)
    runner, port = await _serve(app)
    async with aiohttp.ClientSession() as http:
        yield ControlPlaneUnderTest(port, http, app[SERVICE], settings.data_dir)
    await runner.cleanup()


async def rollout(cp: ControlPlaneUnderTest, policy_id: str) -> dict[str, Any]:
    return dict(await cp.call("GET", f"/v1/policies/{policy_id}/rollout", expect=200))


async def state_is(cp: ControlPlaneUnderTest, policy_id: str, state: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        body = await rollout(cp, policy_id)
        return body if body["state"] == state else None

    return dict(await eventually(check, timeout=10))


async def halts_counted(cp: ControlPlaneUnderTest, n: int, **labels: str) -> None:
    """Called once the halt is visible in the rollout state: the deciding replica counts a
    halt in the same step that makes it visible (HaltBook.apply), so it is counted already."""
    assert await metric(cp.http, cp.base, HALTS, **labels) == n


async def agent_prompt(emulator: Emulator, upstream_id: str) -> Any:
    return (await emulator.session(upstream_id))["config"].get("system_prompt")


async def test_rejections_over_the_threshold_halt_the_version(
    cp: ControlPlaneUnderTest, emulator: Emulator, fleet: Fleet, caplog: Any
) -> None:
    caplog.set_level(logging.WARNING, logger="controlplane")
    doc = {"id": "tone", "match": {"labels": {"group": "g"}}}
    await cp.publish({**doc, "set": {"system_prompt": "v1"}})
    agents = await fleet.open_agents(60, "group=g")
    # five apps whose first push (v1, at connect) stays unanswered: v2 cannot reach them yet
    holders = await fleet.open_apps(5, "hold", labels={"group": "g"})
    held = [await h.next_push(5) for h in holders]
    assert all(p is not None and p.message["session"] == {"system_prompt": "v1"} for p in held)
    for agent in agents[:2]:
        await emulator.faults(agent.upstream_id, {"reject_next_update": {"code": "invalid_config"}})

    await cp.publish({**doc, "set": {"system_prompt": "v2"}})
    body = await state_is(cp, "tone", "halted")

    halt = body["halt"]
    assert halt["version"] == 2 and halt["reason"] == "failure_ratio"
    assert halt["targeted"] == 65 and 1 <= halt["failed"] <= 2
    assert halt["ratio"] == round(halt["failed"] / 65, 6)
    # the failures that caused the halt stay in the counts (issue 19 item 7)
    (v2,) = [row for row in body["versions"] if row["version"] == 2]
    assert v2["guard_failures"] == halt["failed"]
    assert body["totals"]["guard_failures"] == halt["failed"]
    assert (halt["max_failure_ratio"], halt["min_sessions"], halt["window_s"]) == (0.01, 50, 300)
    assert halt["on_breach"] == "halt" and halt["rollback_to"] is None
    assert halt["decided_by"] == "node-a" and halt["actor"] == "guard:node-a"
    assert body["guard"] == {"enabled": True, "max_failure_ratio": 0.01, "min_sessions": 50,
                             "window_s": 300.0, "on_breach": "halt"}  # fmt: skip
    await halts_counted(cp, 1, policy="tone", action="halt")
    assert any(
        r.levelno == logging.WARNING and "tone version 2 HALTED" in r.getMessage()
        for r in caplog.records
    )

    # the agents that applied v2 keep it; nothing more is pushed to anybody
    ok = agents[2:]

    async def applied_v2() -> bool:
        prompts = await asyncio.gather(*(agent_prompt(emulator, a.upstream_id) for a in ok))
        return all(p == "v2" for p in prompts)

    await eventually(applied_v2)
    for agent in agents[:2]:
        assert await agent_prompt(emulator, agent.upstream_id) == "v1"

    # sessions not yet pushed never get v2: the holders answer v1 and receive nothing more
    for holder, push in zip(holders, held, strict=True):
        assert push is not None
        await holder.client.applied(push.version)
    await asyncio.sleep(0.5)
    for holder in holders:
        assert holder.pushes.empty()
        session = await cp.session(holder.session_id)
        assert session["effective_config"] == {"system_prompt": "v1"}
        assert session["state"] == "synced"
        assert all(e["wire"] is None or "v2" not in str(e["wire"])
                   for e in await cp.log(holder.session_id))  # fmt: skip

    # a late joiner starts on v1, the version before the halted one
    late = await fleet.agent("group=g")
    assert await agent_prompt(emulator, late.upstream_id) == "v1"
    late_id = cp.live_by_upstream(late.upstream_id)
    assert (await cp.session(late_id))["provenance"]["system_prompt"]["version"] == 1
    updates = sum([len(await emulator.updates(a.upstream_id, "session.update")) for a in ok])
    await asyncio.sleep(0.3)
    assert sum([len(await emulator.updates(a.upstream_id, "session.update"))
                for a in ok]) == updates  # fmt: skip

    by_version = {(r["version"], r["variant"]): r for r in (await rollout(cp, "tone"))["versions"]}
    assert by_version[(2, None)]["acknowledged"] == 58
    assert by_version[(1, None)]["targeted"] == 5 + 2 + 1  # holders, refusers, late joiner

    # another policy's change re-resolves them all: each session keeps its version of tone
    for holder in holders:
        holder.mode = "ack"
    await cp.publish({"id": "terms", "match": {"labels": {"group": "g"}},
                      "set": {"keyterms": ["Acme"]}})  # fmt: skip
    for holder in holders:
        push = await holder.next_push(5)
        assert push is not None and push.message["session"] == {"input": {"keyterms": ["Acme"]}}

    async def keyterms_everywhere() -> bool:
        configs = [(await emulator.session(a.upstream_id))["config"] for a in [*agents, late]]
        return all(c["input"].get("keyterms") == ["Acme"] for c in configs)

    await eventually(keyterms_everywhere)
    for agent in agents:
        want = "v1" if agent in agents[:2] else "v2"
        assert await agent_prompt(emulator, agent.upstream_id) == want
    assert await agent_prompt(emulator, late.upstream_id) == "v1"
    assert (await rollout(cp, "tone"))["state"] == "halted"

    # publishing a new version ends the halt: everybody gets v3, the guard watches v3
    await cp.publish({**doc, "set": {"system_prompt": "v3"}})
    for holder in holders:
        push = await holder.next_push(5)
        assert push is not None and push.message["session"] == {"system_prompt": "v3"}

    async def all_v3() -> bool:
        prompts = await asyncio.gather(*(agent_prompt(emulator, a.upstream_id)
                                         for a in [*agents, late]))  # fmt: skip
        return all(p == "v3" for p in prompts)

    await eventually(all_v3)
    body = await rollout(cp, "tone")
    assert (body["version"], body["state"], body["halt"]) == (3, "active", None)
    assert await metric(cp.http, cp.base, HALTS, policy="tone") == 1


async def test_on_breach_rollback_pushes_the_previous_version_back(
    cp: ControlPlaneUnderTest, emulator: Emulator, fleet: Fleet
) -> None:
    doc = {"id": "greeting", "match": {"kind": "voice-agent-v1"}}
    await cp.publish({**doc, "set": {"system_prompt": "v1"}})
    agents = await fleet.open_agents(60, "tenant=acme")
    for agent in agents[:2]:
        await emulator.faults(agent.upstream_id, {"reject_next_update": True})
    await cp.publish({**doc, "set": {"system_prompt": "v2"}, "guard": {"on_breach": "rollback"}})

    body = await state_is(cp, "greeting", "rolled_back")
    assert body["version"] == 3
    assert body["halt"]["version"] == 2 and body["halt"]["rollback_to"] == 1
    assert body["halt"]["on_breach"] == "rollback"
    await halts_counted(cp, 1, policy="greeting", action="rollback")
    versions = (await cp.call("GET", "/v1/policies/greeting/versions", expect=200))["items"]
    assert [(v["version"], v["cause"]) for v in versions] == [
        (1, "policy"), (2, "policy"), (3, "rollback")
    ]  # fmt: skip
    assert versions[2]["actor"] == "guard:node-a"
    assert versions[2]["policy"]["set"] == {"system_prompt": "v1"}

    async def all_v1() -> bool:
        prompts = await asyncio.gather(*(agent_prompt(emulator, a.upstream_id) for a in agents))
        return all(p == "v1" for p in prompts)

    await eventually(all_v1)
    sid = cp.live_by_upstream(agents[5].upstream_id)

    async def rolled_back_entry() -> list[dict[str, Any]]:
        return [e for e in await cp.log(sid) if e["cause"] == "rollback" and e["status"] == "acked"]

    entry = (await eventually(rolled_back_entry))[0]
    assert entry["delta"] == {"system_prompt": "v1"}
    assert entry["policies"] == [await cp.ref("greeting", 3)]


async def test_failures_below_the_ratio_or_among_too_few_sessions_do_not_halt(
    cp: ControlPlaneUnderTest, fleet: Fleet
) -> None:
    # 2 of 60 (3.3 %) under a 5 % guard
    await fleet.open_apps(58, "ack", labels={"group": "big"})
    failing = await fleet.open_apps(2, "fail", labels={"group": "big"})
    big = {"id": "big", "match": {"labels": {"group": "big"}},
           "guard": {"max_failure_ratio": 0.05}}  # fmt: skip
    await cp.publish({**big, "set": {"system_prompt": "v1"}})
    # 3 of 10 (30 %), but fewer than the 50 sessions the default guard needs
    await fleet.open_apps(7, "ack", labels={"group": "small"})
    await fleet.open_apps(3, "fail", labels={"group": "small"})
    small = {"id": "small", "match": {"labels": {"group": "small"}}}
    await cp.publish({**small, "set": {"system_prompt": "v1"}})

    async def counted() -> bool:
        a, b = await rollout(cp, "big"), await rollout(cp, "small")
        return bool(a["totals"]["rejected"] == 2 and b["totals"]["rejected"] == 3)

    await eventually(counted)
    await asyncio.sleep(0.3)  # the guard checks right after each failure
    for policy_id, failures in (("big", 2), ("small", 3)):
        body = await rollout(cp, policy_id)
        assert body["state"] == "active" and body["halt"] is None
        assert body["totals"]["guard_failures"] == failures
    assert await metric(cp.http, cp.base, HALTS) == 0
    assert (await cp.session(failing[0].session_id))["state"] == "rejected"
    await cp.publish({**big, "set": {"system_prompt": "v2"}})
    assert (await rollout(cp, "big"))["version"] == 2


async def test_streaming_sessions_never_halt_but_voice_agent_timeouts_do(
    quick_cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    cp = quick_cp
    fleet = Fleet(cp.ws_base)
    try:
        # Streaming v3: 60 apps that never report. No acknowledgement exists: not a failure.
        await fleet.open_apps(60, "silent", kind="streaming-v3", labels={"group": "stt"})
        await cp.publish({"id": "terms", "match": {"kind": "streaming-v3"},
                          "set": {"keyterms": ["Acme"]}})  # fmt: skip

        async def timed_out() -> bool:
            return bool((await rollout(cp, "terms"))["totals"]["unverified"] == 60)

        await eventually(timed_out)
        await asyncio.sleep(0.3)
        body = await rollout(cp, "terms")
        assert body["state"] == "active" and body["totals"]["guard_failures"] == 0

        # Voice Agent: 1 of 50 sessions not acknowledging within the timeout (2 %) halts
        await fleet.open_apps(49, "ack", labels={"group": "va"})
        await fleet.open_apps(1, "silent", labels={"group": "va"})
        await cp.publish({"id": "va", "match": {"labels": {"group": "va"}},
                          "set": {"system_prompt": "Be brief."}})  # fmt: skip
        body = await state_is(cp, "va", "halted")
        assert (body["halt"]["failed"], body["halt"]["targeted"]) == (1, 50)
        assert await metric(cp.http, cp.base, HALTS, policy="terms") == 0
        assert (await rollout(cp, "terms"))["state"] == "active"
    finally:
        await fleet.close()
