"""Issue 21, progressive waves (docs/policies.md#waves), on the real service: control-channel
apps whose session ids were chosen for their rollout buckets, so each wave's members are
known in advance (waves 25 / 50 / 100: group A in the first wave, B joins at 50, C at 100)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest

from controlplane import cli
from controlplane.intake.bus import rfc3339
from policies.bucketing import bucket
from sessions.clock import FakeClock
from tests.integration.service.conftest import ADMIN, ControlPlaneUnderTest, eventually
from tests.integration.service.fleet import App, Fleet, metric

POLICY = "wv"
WAVES = [25, 50, 100]
LABELS = {"group": "w"}
V1 = {"id": POLICY, "match": {"labels": {"group": "w"}}, "set": {"system_prompt": "v1"}}


def ids_by_wave(per_wave: int) -> list[list[str]]:
    """Session ids whose rollout bucket puts them in wave 1 (< 25 %), wave 2 only (25-50 %)
    and wave 3 only (>= 50 %): ``per_wave`` each, found by scanning a fixed name list."""
    groups: list[list[str]] = [[], [], []]
    for i in range(10_000):
        sid = f"wave-app-{i}"
        b = bucket(POLICY, "rollout", sid)
        g = 0 if b < 0.25 else 1 if b < 0.5 else 2
        if len(groups[g]) < per_wave:
            groups[g].append(sid)
        if all(len(x) == per_wave for x in groups):
            return groups
    raise AssertionError("not enough ids")


@pytest.fixture
async def fleet(cp: ControlPlaneUnderTest) -> AsyncIterator[Fleet]:
    f = Fleet(cp.ws_base)
    try:
        yield f
    finally:
        await f.close()


async def open_groups(fleet: Fleet, per_wave: int) -> list[list[App]]:
    """Apps (acknowledging) in each wave's bucket range, their connect push (v1) drained."""
    groups = []
    for ids in ids_by_wave(per_wave):
        apps = [await fleet.app("ack", labels=LABELS, session_id=sid) for sid in ids]
        for app in apps:
            first = await app.next_push(5)
            assert first is not None and first.message["session"] == {"system_prompt": "v1"}
        groups.append(apps)
    return groups


def v2(interval: float, **extra: Any) -> dict[str, Any]:
    return {**V1, "set": {"system_prompt": "v2"},
            "rollout": {"waves": WAVES, "wave_interval_s": interval}, **extra}  # fmt: skip


async def rollout(cp: ControlPlaneUnderTest) -> dict[str, Any]:
    return dict(await cp.call("GET", f"/v1/policies/{POLICY}/rollout", expect=200))


async def waves_where(cp: ControlPlaneUnderTest, **want: Any) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        waves = (await rollout(cp))["waves"]
        return waves if all(waves.get(k) == v for k, v in want.items()) else None

    return dict(await eventually(check, timeout=10))


async def got_v2(app: App, timeout: float) -> bool:
    push = await app.next_push(timeout)
    return push is not None and push.message["session"] == {"system_prompt": "v2"}


async def prompt(cp: ControlPlaneUnderTest, app: App) -> Any:
    return (await cp.session(app.session_id))["effective_config"].get("system_prompt")


def run_cli(cp: ControlPlaneUnderTest, *args: str, token: str = ADMIN) -> int:
    return cli.main([*args[:2], "--url", cp.base, "--token", token, *args[2:]])


async def test_a_version_advances_wave_by_wave_to_the_whole_fleet(
    cp: ControlPlaneUnderTest, fleet: Fleet
) -> None:
    await cp.publish(V1)
    a, b, c = await open_groups(fleet, 2)

    await cp.publish(v2(1.5))  # short, yet long enough to look at wave 1 under load
    for app in a:  # the first wave gets v2 at once
        assert await got_v2(app, 1.4)
    waves = (await rollout(cp))["waves"]
    assert (waves["index"], waves["percent"], waves["state"]) == (0, 25, "advancing")
    assert waves["previous_version"] == 1 and waves["next_at"] is not None
    for app in b + c:  # the rest of the fleet keeps v1 meanwhile
        assert app.pushes.empty()
        assert await prompt(cp, app) == "v1"

    for app in b:  # wave 2 (50 %) one interval later: group B, not yet C
        assert await got_v2(app, 3)
    assert (await rollout(cp))["waves"]["index"] >= 1
    for app in c:
        assert await got_v2(app, 3)
    waves = await waves_where(cp, state="complete")
    assert waves["index"] == 2 and waves["percent"] == 100
    assert [(s["seq"], s["action"], s["index"], s["percent"]) for s in waves["steps"]] == [
        (1, "advance", 1, 50), (2, "advance", 2, 100),
    ]  # fmt: skip
    # nested and in order: B was reached after the first step, C only after the second
    for group, step in ((b, waves["steps"][0]), (c, waves["steps"][1])):
        for app in group:
            (sent,) = [e for e in await cp.log(app.session_id)
                       if e["status"] == "sent" and "v2" in json.dumps(e["wire"])]  # fmt: skip
            assert sent["at"] >= datetime.fromisoformat(step["at"]).timestamp()
    for app in a:  # the first wave got exactly one v2 push: nothing was pushed again
        assert app.pushes.empty()
    assert await metric(cp.http, cp.base, "controlplane_rollout_wave_percent", policy=POLICY) == 100
    assert await metric(cp.http, cp.base, "controlplane_rollout_wave_steps_total",
                        policy=POLICY, action="advance") == 2  # fmt: skip
    late = await fleet.app("ack", labels=LABELS, session_id=ids_by_wave(3)[2][2])
    assert await got_v2(late, 5)


async def test_a_wave_stalls_on_rejections_before_reaching_the_rest_of_the_fleet(
    cp: ControlPlaneUnderTest, fleet: Fleet, capsys: Any
) -> None:
    await cp.publish(V1)
    a, b, c = await open_groups(fleet, 3)
    for app in a:
        app.mode = "fail"
    guard = {"enabled": True, "min_sessions": 2, "max_failure_ratio": 0.4, "window_s": 60.0}
    await cp.publish(v2(0.5, guard=guard))

    body = await eventually(lambda: _halted(cp), timeout=10)
    assert body["waves"]["state"] == "stalled" and body["waves"]["index"] == 0
    assert body["halt"]["wave"] == {"index": 0, "percent": 25.0}
    assert body["halt"]["targeted"] == 3 and body["halt"]["failed"] >= 2
    await asyncio.sleep(1.6)  # three intervals: a stalled version never advances
    body = await rollout(cp)
    assert body["state"] == "halted" and body["waves"]["index"] == 0
    assert body["waves"]["steps"] == []
    for app in b + c:  # the rest of the fleet never got v2
        assert app.pushes.empty()
        assert await prompt(cp, app) == "v1"
    assert await metric(cp.http, cp.base, "controlplane_rollout_wave_stalled", policy=POLICY) == 1
    refused = await cp.call("POST", f"/v1/policies/{POLICY}/promote", expect=409)
    assert refused["error"]["code"] == "wave_stalled"

    capsys.readouterr()
    assert await asyncio.to_thread(run_cli, cp, "policy", "rollout", POLICY) == 0
    out = capsys.readouterr().out
    assert "waves: stalled at wave 1 of 3 (25%)" in out and "HALTED version 2" in out
    assert await asyncio.to_thread(run_cli, cp, "policy", "rollout", POLICY, "--json") == 0
    assert json.loads(capsys.readouterr().out)["waves"]["state"] == "stalled"


async def _halted(cp: ControlPlaneUnderTest) -> dict[str, Any] | None:
    body = await rollout(cp)
    return body if body["state"] == "halted" else None


async def test_promote_pause_and_resume_through_rest_and_cli_with_role_checks(
    cp: ControlPlaneUnderTest, fleet: Fleet, capsys: Any
) -> None:
    await cp.publish(V1)
    a, b, c = await open_groups(fleet, 1)
    await cp.publish(v2(60.0))
    assert await got_v2(a[0], 3)
    path = f"/v1/policies/{POLICY}"

    # roles: a viewer may not; an experimenter may not act on an admin's policy
    await cp.call("POST", path + "/promote", token="tok-viewer", expect=403)
    owned = await cp.call("POST", path + "/pause", token="tok-experimenter", expect=403)
    assert owned["error"]["code"] == "policy_owned"
    assert (await rollout(cp))["waves"]["steps"] == []

    promoted = await cp.call("POST", path + "/promote", expect=200)
    assert promoted["version"] == 2 and promoted["waves"]["index"] == 1
    assert await got_v2(b[0], 3)
    assert c[0].pushes.empty() and await prompt(cp, c[0]) == "v1"

    assert await asyncio.to_thread(run_cli, cp, "policy", "pause", POLICY) == 0
    assert "paused policy wv version 2: wave 2 of 3 (50%), paused" in capsys.readouterr().out
    again = await cp.call("POST", path + "/pause", expect=409)
    assert again["error"]["code"] == "cannot_pause"
    assert (await rollout(cp))["waves"]["next_at"] is None

    resumed = await cp.call("POST", path + "/resume", expect=200)
    assert resumed["waves"]["state"] == "advancing" and not resumed["waves"]["paused"]
    assert await asyncio.to_thread(run_cli, cp, "policy", "promote", POLICY, "--json") == 0
    assert json.loads(capsys.readouterr().out)["waves"]["state"] == "complete"
    assert await got_v2(c[0], 3)
    assert await asyncio.to_thread(run_cli, cp, "policy", "promote", POLICY) != 0
    steps = (await rollout(cp))["waves"]["steps"]
    assert [(s["action"], s["actor"].split(":")[0]) for s in steps] == [
        ("promote", "admin"), ("pause", "admin"), ("resume", "admin"), ("promote", "admin"),
    ]  # fmt: skip

    await cp.publish({**V1, "id": "plain"})
    none = await cp.call("POST", "/v1/policies/plain/promote", expect=409)
    assert none["error"]["code"] == "no_waves"
    assert (await cp.call("GET", "/v1/policies/plain/rollout", expect=200))["waves"] is None


async def test_waves_advance_by_the_injected_clock(
    clocked_cp: tuple[ControlPlaneUnderTest, FakeClock],
) -> None:
    cp, clock = clocked_cp
    fleet = Fleet(cp.ws_base)
    try:
        await cp.publish(V1)
        _, (b,), _ = await open_groups(fleet, 1)
        await cp.publish(v2(60.0))
        await asyncio.sleep(1.2)  # real time passes, the control plane's clock does not
        clock.advance(59.0)
        await asyncio.sleep(1.2)
        assert (await rollout(cp))["waves"]["index"] == 0 and b.pushes.empty()
        clock.advance(1.5)
        assert await got_v2(b, 5)
        waves = await waves_where(cp, index=1)
        assert waves["steps"][0]["at"] == rfc3339(clock.now())  # the step's time: that clock
    finally:
        await fleet.close()
