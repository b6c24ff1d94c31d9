"""The rollout guard and late answers (docs/policies.md#guard): a Voice Agent push that timed
out is counted as a failure; when its answer comes after all (the upstream slower than the
acknowledgement timeout, or a control-channel app reporting late), the count is retracted
while the guard's window still holds it — applied, the push did not fail; refused, the
refusal counts instead, once. Real sockets: the gateway and the control channel, the emulator
as upstream; the guard's count read where an operator reads it (``GET …/rollout``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from controlplane.config import Settings
from tests.integration.differential.actors import Actor, ControlApp, GatewayAgent
from tests.integration.service.conftest import (
    ADMIN,
    ControlPlaneUnderTest,
    Emulator,
    eventually,
    serving,
)

ACK_TIMEOUT_S = 0.4
LATE_S = 0.9  # the upstream's (or the app's) wait before answering: > ACK_TIMEOUT_S
# guarded, never halting with one session (min_sessions 2): the count stays visible
GUARD = {"enabled": True, "min_sessions": 2, "window_s": 60.0}


@pytest.fixture
async def cp_quick(cp_settings: Callable[..., Settings]) -> AsyncIterator[ControlPlaneUnderTest]:
    async with serving(cp_settings(ack_timeout_s=ACK_TIMEOUT_S)) as cp:
        yield cp


async def _open(via: str, cp: ControlPlaneUnderTest, emulator: Emulator) -> Actor:
    if via == "control":
        app = ControlApp("ca", "voice-agent-v1", "voice-agent", "control")
        await app.open(f"ws://127.0.0.1:{emulator.port}", cp.ws_base, ADMIN, {"tier": "gold"})
        app.report_delay_s = LATE_S
        return app
    agent = GatewayAgent("a0", "voice-agent-v1", "voice-agent", "gateway")
    await agent.open(cp.ws_base, "tier=gold")
    agent.session_id = cp.live_by_upstream(agent.upstream_id)
    await emulator.faults(agent.upstream_id, {"latency_ms": LATE_S * 1000})
    return agent


async def _failures(cp: ControlPlaneUnderTest, policy_id: str) -> int:
    body = await cp.call("GET", f"/v1/policies/{policy_id}/rollout", expect=200)
    return int(body["totals"].get("guard_failures", 0))


async def _statuses(cp: ControlPlaneUnderTest, sid: str, n: int) -> list[str] | None:
    log = [e["status"] for e in await cp.log(sid) if e["cause"] == "policy"]
    return log if len(log) >= n else None


@pytest.mark.parametrize("via", ["gateway", "control"])
async def test_a_timeout_answered_late_is_no_failure_for_the_guard(
    cp_quick: ControlPlaneUnderTest, emulator: Emulator, via: str
) -> None:
    cp = cp_quick
    actor = await _open(via, cp, emulator)
    try:
        sid = actor.session_id
        doc = {"id": "slow", "match": {"kind": ["voice-agent-v1"]},
               "set": {"system_prompt": "Late, not failed."}, "guard": GUARD}  # fmt: skip
        await cp.publish(doc)
        assert await eventually(lambda: _statuses(cp, sid, 2)) == ["sent", "unverified"]
        assert await eventually(lambda: _failures(cp, "slow")) == 1  # the timeout counted
        statuses = await eventually(lambda: _statuses(cp, sid, 3))
        assert statuses == ["sent", "unverified", "acked"], statuses  # answered late: applied

        async def retracted() -> bool:
            return await _failures(cp, "slow") == 0

        await eventually(retracted)
        body = await cp.call("GET", "/v1/policies/slow/rollout", expect=200)
        assert body["state"] == "active" and body["totals"]["acknowledged"] == 1, body
    finally:
        await actor.close()


async def test_a_timeout_refused_late_counts_once(
    cp_quick: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """The late answer is a refusal: the timeout is retracted and the refusal counted, one
    failure for one push (never two)."""
    cp = cp_quick
    agent: Any = await _open("gateway", cp, emulator)
    try:
        sid = agent.session_id
        refuse = {"fail_fields": {"system_prompt": "invalid_value"}}
        await emulator.faults(agent.upstream_id, refuse)
        await cp.publish({"id": "slow", "match": {"kind": ["voice-agent-v1"]},
                          "set": {"system_prompt": "Refused, late."}, "guard": GUARD})  # fmt: skip
        statuses = await eventually(lambda: _statuses(cp, sid, 3))
        assert statuses == ["sent", "unverified", "rejected"], statuses
        assert await _failures(cp, "slow") == 1
    finally:
        await agent.close()
