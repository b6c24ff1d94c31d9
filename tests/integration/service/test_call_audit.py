"""A compliance reviewer asks, per call, which configuration was in effect when (``audit at``),
by the id the customer knows: the upstream session id. A Voice Agent call whose upstream
connection dropped and that the client resumed through the gateway is two control-plane
sessions sharing that id; the id found the latest one only, so an instant during the first
session answered 404 ``before_session`` (the call's first part had no answer by its id).
Real sockets to the emulator."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from controlplane.cli.main import main
from tests.integration.service.conftest import ControlPlaneUnderTest, Emulator, eventually
from tests.integration.service.test_experiment_truth import _agent

pytestmark = pytest.mark.timeout(60)

POLICY = {"id": "terms", "match": {"kind": ["voice-agent-v1"]}}


async def _acked(cp: ControlPlaneUnderTest, sid: str, version: int) -> dict[str, Any]:
    async def found() -> dict[str, Any] | None:
        return next((e for e in await cp.log(sid) if e["status"] == "acked"
                     and any(p["id"] == "terms" and p["version"] == version
                             for p in e["policies"])), None)  # fmt: skip

    entry: dict[str, Any] = await eventually(found, timeout=10)
    return entry


def _cli_at(cp: ControlPlaneUnderTest, ref: str, at: float, capsys: Any) -> tuple[int, Any]:
    capsys.readouterr()
    code = main(["audit", "at", ref, repr(at), "--url", cp.base, "--token", "tok-compliance",
                 "--json"])  # fmt: skip
    return code, json.loads(capsys.readouterr().out)


async def test_audit_at_by_a_resumed_calls_upstream_id_answers_from_the_session_then_running(
    cp: ControlPlaneUnderTest, emulator: Emulator, capsys: Any
) -> None:
    ws, upstream_id = await _agent(cp, {"type": "session.update", "session": {}})
    first = cp.live_by_upstream(upstream_id)
    await cp.publish({**POLICY, "set": {"keyterms": ["Alpha"]}})
    during_first = (await _acked(cp, first, 1))["at"] + 0.01
    await emulator.faults(upstream_id, {"drop_after_messages": 1})
    await cp.publish({**POLICY, "set": {"keyterms": ["Beta"]}})  # drops the upstream
    await eventually(lambda: not cp.service.engine.live, timeout=10)
    await ws.close()
    resumed, again = await _agent(cp, {"type": "session.resume", "session_id": upstream_id})
    second = cp.live_by_upstream(upstream_id)
    assert again == upstream_id and second != first
    await cp.publish({**POLICY, "set": {"keyterms": ["Gamma"]}})
    during_second = (await _acked(cp, second, 3))["at"] + 0.01
    await asyncio.sleep(0.05)
    try:
        for at, session, terms in ((during_first, first, ["Alpha"]),
                                   (during_second, second, ["Gamma"])):  # fmt: skip
            answer = await cp.call("GET", f"/v1/sessions/{upstream_id}/config-at?at={at!r}",
                                   token="tok-compliance", expect=200)  # fmt: skip
            assert (answer["session_id"], answer["config"]["keyterms"]) == (session, terms)
            code, said = await asyncio.to_thread(_cli_at, cp, upstream_id, at, capsys)
            assert code in (0, 1) and said["session_id"] == session
            assert said["config"] == answer["config"]
        # before the call began there is still no answer
        before = during_first - 3600
        await cp.call("GET", f"/v1/sessions/{upstream_id}/config-at?at={before!r}",
                      token="tok-compliance", expect=404)  # fmt: skip
        assert time.time() > during_second
    finally:
        await resumed.close()
