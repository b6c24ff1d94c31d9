"""The wall clock steps (NTP, a VM resumed, an operator) while the control plane runs.

A real clock step is not possible here (changing the system clock would move every other
process on the machine, and the container may not set it): the step is injected through the
service's clock (``sessions.clock.FakeClock.step_wall``: the wall time moves, the monotonic
time does not), which every timer and every timestamp of the service reads.

What a step must not do: a wave advance early (a step forward skipping the interval a
guarded rollout waits to see failures) or stall for the size of a step back; the version
log's entries keep their chain and order either way (docs/reliability.md, "Clock steps").
"""

from __future__ import annotations

import asyncio

import pytest

from sessions.clock import FakeClock
from tests.integration.service.conftest import ControlPlaneUnderTest
from tests.integration.service.fleet import Fleet
from tests.integration.service.test_waves import V1, got_v2, open_groups, rollout, v2


@pytest.mark.parametrize("step_s", [3600.0, -3600.0])
async def test_a_wall_clock_step_neither_advances_a_wave_early_nor_stalls_it(
    clocked_cp: tuple[ControlPlaneUnderTest, FakeClock], step_s: float
) -> None:
    cp, clock = clocked_cp
    fleet = Fleet(cp.ws_base)
    try:
        await cp.publish(V1)
        _, (b,), _ = await open_groups(fleet, 1)
        await cp.publish(v2(60.0))
        await asyncio.sleep(0.5)
        clock.step_wall(step_s)  # an hour forward (or back): no time has passed
        await asyncio.sleep(1.2)  # the wave task looks every 0.1 s
        assert (await rollout(cp))["waves"]["index"] == 0 and b.pushes.empty()
        clock.advance(59.0)
        await asyncio.sleep(1.2)
        assert (await rollout(cp))["waves"]["index"] == 0 and b.pushes.empty()
        clock.advance(1.5)  # the interval has passed: the next wave, despite the step
        assert await got_v2(b, 5)
        assert (await rollout(cp))["waves"]["index"] == 1
        entries = await cp.log(b.session_id)
        assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    finally:
        await fleet.close()


async def test_a_wall_clock_step_forward_is_no_missing_checkpoint_alarm(
    clocked_cp: tuple[ControlPlaneUnderTest, FakeClock],
) -> None:
    cp, clock = clocked_cp
    fleet = Fleet(cp.ws_base)
    try:
        await cp.publish(V1)
        await open_groups(fleet, 1)
        assert (await cp.call("GET", "/v1/audit/verify", expect=200))["ok"] is True
        clock.step_wall(3600.0)  # the entries not yet in a checkpoint look an hour old
        verified = await cp.call("GET", "/v1/audit/verify", expect=200)
        assert verified["ok"] is True, verified["checkpoints"]
    finally:
        await fleet.close()
