"""An experimenter's run compared with the emulator's ground truth (real gateway Voice Agent
sockets): start at 50 %, ramp to 100 %, a compliance lock on the variant's field mid-way, stop
(retire) mid fan-out, start again. Afterwards, for every call: it is exposed to ``warm`` if and
only if its upstream ran warm's prompt at some point, at the entry its log names, and the
summary counts exactly the calls the export marks counted."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets

from tests.integration.service.conftest import ControlPlaneUnderTest, Emulator, eventually
from tests.integration.service.test_experiment_truth import AGENT_KEY, _cli, _rows
from tests.integration.service.test_experiments import _summary

pytestmark = pytest.mark.timeout(90)

WARM = "Warm welcome."
LEGAL = "This call is recorded."


def _doc(percent: float) -> dict[str, Any]:
    return {"id": "tone", "match": {"kind": ["voice-agent-v1"]}, "rollout": {"percent": percent},
            "experiment": {"key": "tone", "variants": [
                {"name": "control", "weight": 50, "set": {}},
                {"name": "warm", "weight": 50, "set": {"system_prompt": WARM}}]}}  # fmt: skip


async def _call(cp: ControlPlaneUnderTest) -> tuple[Any, str]:
    ws = await websockets.connect(cp.ws_base + "/v1/ws", additional_headers=AGENT_KEY)
    await ws.send(json.dumps({"type": "session.update", "session": {}}))
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if message["type"] == "session.ready":
            return ws, str(message["session_id"])


async def _quiet(cp: ControlPlaneUnderTest) -> None:
    """Every live session's push answered (or given up): the next step of the scenario starts
    after the fan-out (what the exposures say is waited for where it is read)."""

    def settled() -> bool:
        states = [ls.push for ls in cp.service.engine.live.values()]
        return all(p.in_flight is None and p.desired_version == p.sent_version for p in states)

    await eventually(settled, timeout=10)


async def test_exposures_match_what_the_upstream_ran_through_ramp_lock_stop_and_restart(
    cp: ControlPlaneUnderTest, emulator: Emulator, capsys: Any
) -> None:
    calls: dict[str, Any] = {}
    await cp.publish(_doc(50), token="tok-experimenter")
    for _ in range(8):
        ws, upstream = await _call(cp)
        calls[upstream] = ws
    await cp.publish(_doc(100), token="tok-experimenter")  # ramp
    for _ in range(4):
        ws, upstream = await _call(cp)
        calls[upstream] = ws
    await _quiet(cp)
    await cp.publish({"id": "legal", "match": {"kind": ["voice-agent-v1"]},
                      "set": {"system_prompt": LEGAL}, "lock": ["system_prompt"]},
                     token="tok-compliance")  # fmt: skip
    for _ in range(4):  # join under the lock: warm's prompt never runs on them
        ws, upstream = await _call(cp)
        calls[upstream] = ws
    await _quiet(cp)
    await cp.call("DELETE", "/v1/policies/legal", token="tok-compliance", expect=200)
    await cp.call("DELETE", "/v1/policies/tone", token="tok-experimenter", expect=200)
    await cp.publish(_doc(100), token="tok-experimenter")  # started again mid fan-out
    for _ in range(2):
        ws, upstream = await _call(cp)
        calls[upstream] = ws
    await _quiet(cp)

    ran_warm: dict[str, float] = {}  # upstream id -> when the upstream first ran warm's prompt
    for upstream in calls:
        timeline = (await emulator.session(upstream))["timeline"]
        at = [e["at"] for e in timeline if (e.get("config") or {}).get("system_prompt") == WARM]
        if at:
            ran_warm[upstream] = min(at)

    async def flushed() -> tuple[dict[str, Any], dict[str, Any], set[str]]:
        # the exposure rows as REST reads them once the book has flushed (every 0.5 s)
        rows = await _rows(cp, "tone")
        by_upstream = {r["upstream_session_id"]: r for r in rows.values()}
        exposed_warm = {u for u, r in by_upstream.items()
                        if r["exposed_at"] and r["variant"] == "warm"}  # fmt: skip
        assert exposed_warm == set(ran_warm), (
            sorted(exposed_warm - set(ran_warm)),
            sorted(set(ran_warm) - exposed_warm),
        )
        return rows, by_upstream, exposed_warm

    rows, by_upstream, exposed_warm = await eventually(flushed, timeout=10)
    assert ran_warm, "no call ran the warm arm: the scenario tests nothing"
    for upstream in exposed_warm:  # exposed once the upstream ran it, never before
        row = by_upstream[upstream]
        entry = {e["seq"]: e for e in await cp.log(row["session_id"])}[row["exposed_seq"]]
        assert entry["status"] in ("acked", "unchanged"), entry
        assert entry["at"] >= ran_warm[upstream], (entry, ran_warm[upstream])
    summary = await _summary(cp, "tone")
    counted = [r for r in rows.values() if r["counted"]]
    assert summary["exposed"] == len(counted)
    assert {v["name"]: v["exposed"] for v in summary["variants"]} == {
        name: sum(1 for r in counted if r["variant"] == name) for name in ("control", "warm")
    }
    code, report = await _cli(cp, capsys, "experiments", "verify", "tone")
    assert (code, report["problems"]) == (0, []), report
    for ws in calls.values():
        await ws.close()
