"""Locks and teams (docs/security.md#locks-and-teams), through real sockets: a field locked by
one compliance team can be set only by that team's policies or an admin's, whatever another
compliance team's priority. Enforced at publish time (REST, preview, the CLI, a policy event
on the bus: 409 ``field_locked`` naming the holder, nothing stored) and in resolution (a
policy stored before the lock): the session's record and the upstream (the emulator) both run
the lock holder's value.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import websockets

from controlplane import cli
from controlplane.config import Settings
from controlplane.intake.bus import PolicyEvent, rfc3339
from tests.integration.distributed.conftest import Cluster, cluster  # noqa: F401
from tests.integration.service.conftest import (
    ControlPlaneUnderTest,
    Emulator,
    eventually,
    serving,
)

TOKENS = {
    "tok-legal": "compliance@legal",
    "tok-legal-2": "compliance@legal",
    "tok-risk": "compliance@risk",
    "tok-admin": "admin",
}
CONNECT = "/v3/ws?sample_rate=16000&speech_model=universal-3-5-pro"
HEADERS = {"Authorization": "test-key"}
STREAMING = {"kind": ["streaming-v3"]}
LEGAL = {"id": "legal-turns", "match": STREAMING, "set": {"max_turn_silence_ms": 2500},
         "lock": ["max_turn_silence_ms"]}  # fmt: skip
RISK = {"id": "risk-turns", "priority": 1000, "match": STREAMING,
        "set": {"max_turn_silence_ms": 900}}  # fmt: skip


@pytest.fixture
async def cp(cp_settings: Callable[..., Settings]) -> AsyncIterator[ControlPlaneUnderTest]:
    async with serving(cp_settings(tokens=TOKENS)) as cp:
        yield cp


async def _begin(ws: Any) -> str:
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if msg.get("type") == "Begin":
            return str(msg["id"])


async def _silence_everywhere(
    cp: ControlPlaneUnderTest, emulator: Emulator, upstream_id: str
) -> tuple[Any, Any, Any]:
    """max_turn_silence as the session object, the verified record and the upstream say."""
    session_id = cp.live_by_upstream(upstream_id)
    view = (await cp.session(session_id))["effective_config"].get("max_turn_silence_ms")
    await asyncio.sleep(0.01)
    at = await cp.call(
        "GET", f"/v1/sessions/{session_id}/config-at?at={time.time():.6f}", expect=200
    )
    assert at["verified"] is True, at
    upstream = (await emulator.session(upstream_id))["config"]["max_turn_silence"]
    return view, at["config"].get("max_turn_silence_ms"), upstream


async def _locked(cp: ControlPlaneUnderTest, path: str, doc: dict[str, Any]) -> dict[str, Any]:
    body = await cp.call("POST", path, token="tok-risk", body=doc, expect=409)
    error = dict(body["error"])
    assert error["code"] == "field_locked", error
    return error


async def test_another_compliance_teams_higher_priority_policy_stored_earlier_does_not_win(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """Resolution: risk's policy (priority 1000) was stored before legal locked the field;
    legal's value runs, on the record and upstream, for a new session and a live one."""
    await cp.publish(RISK, token="tok-risk")
    async with websockets.connect(cp.ws_base + CONNECT, additional_headers=HEADERS) as live:
        live_id = await _begin(live)
        assert await _silence_everywhere(cp, emulator, live_id) == (900, 900, 900)
        await cp.publish(LEGAL, token="tok-legal")  # the first lock of the field: allowed

        async def converged() -> bool:
            return await _silence_everywhere(cp, emulator, live_id) == (2500, 2500, 2500)

        assert await eventually(converged)
        async with websockets.connect(cp.ws_base + CONNECT, additional_headers=HEADERS) as ws:
            assert await _silence_everywhere(cp, emulator, await _begin(ws)) == (2500,) * 3
        # risk may change its policy, but not roll it back to the version that sets the field
        await cp.publish({**RISK, "set": {"vad_threshold": 0.5}}, token="tok-risk")
        error = await _locked(cp, "/v1/policies/risk-turns/rollback", {"to": 1})
        assert (error["details"]["owner_team"], error["details"]["team"]) == ("legal", "risk")
        # legal's own policies (any of its tokens) and an admin's may still set it
        mine = {**RISK, "id": "legal-fast", "set": {"max_turn_silence_ms": 1800}}
        await cp.publish(mine, token="tok-legal-2")

        async def legal_fast() -> bool:
            return await _silence_everywhere(cp, emulator, live_id) == (1800,) * 3

        assert await eventually(legal_fast)
        admin = {**RISK, "id": "admin-turns", "priority": 2000,
                 "set": {"max_turn_silence_ms": 1200}}  # fmt: skip
        await cp.publish(admin, token="tok-admin")

        async def admins() -> bool:
            return await _silence_everywhere(cp, emulator, live_id) == (1200,) * 3

        assert await eventually(admins)


async def test_another_team_may_not_set_or_lock_the_field_on_any_path_and_nothing_changes(
    cp: ControlPlaneUnderTest, emulator: Emulator, capsys: Any
) -> None:
    await cp.publish(LEGAL, token="tok-legal")
    for path in ("/v1/policies", "/v1/policies/preview"):
        error = await _locked(cp, path, RISK)
        assert error["details"] | {"conflicts": None} == {
            "field": "max_turn_silence_ms", "policy": "legal-turns", "version": 1,
            "owner_role": "compliance", "owner_team": "legal", "role": "compliance",
            "team": "risk", "conflicts": None,
        }  # fmt: skip
        assert "team 'legal'" in error["message"] and "'legal-turns'" in error["message"]
    # a second team's lock of the field, even where only some labels would meet: refused
    relock = {"id": "risk-lock", "match": {"labels": {"tier": "gold"}},
              "set": {"max_turn_silence_ms": 900}, "lock": ["max_turn_silence_ms"]}  # fmt: skip
    error = await _locked(cp, "/v1/policies", relock)
    assert error["details"]["conflicts"][0]["locks"] is True
    # the CLI (it calls REST): refused, naming the holder
    doc = cp.data_dir.parent / "risk.json"
    doc.write_text(json.dumps(RISK))
    capsys.readouterr()
    argv = ["policy", "apply", "--url", cp.base, "--token", "tok-risk", "-f", str(doc)]
    assert await asyncio.to_thread(cli.main, argv) != 0
    assert "legal-turns" in capsys.readouterr().err
    # a policy event on the bus (another replica, an operator's tool): every store refuses it
    event = PolicyEvent("policy.published", {**RISK, "version": 1}, "compliance:0a0b0c",
                        rfc3339(time.time()), role="compliance", team="risk")  # fmt: skip
    await cp.service.bus.publish(event)
    await asyncio.sleep(0.2)
    for policy_id in ("risk-turns", "risk-lock"):
        await cp.call("GET", f"/v1/policies/{policy_id}", expect=404)
    assert not list((cp.data_dir / "policies").rglob("*risk*"))
    async with websockets.connect(cp.ws_base + CONNECT, additional_headers=HEADERS) as ws:
        assert await _silence_everywhere(cp, emulator, await _begin(ws)) == (2500,) * 3
    # outside the lock's sessions another team may set the field
    voice = {**RISK, "match": {"kind": ["voice-agent-v1"]}}
    assert (await cp.call("POST", "/v1/policies", token="tok-risk", body=voice,
                          expect=201))["warnings"] == []  # fmt: skip


async def test_every_replica_refuses_an_event_crossing_another_teams_lock(
    cluster: Cluster,  # noqa: F811
) -> None:
    """Distributed: an event on the policy stream (another tool, an older replica) from team
    risk setting legal's locked field is refused by both replicas; legal's own event applies."""
    tokens = {**TOKENS, "tok-legal": "compliance@legal"}
    a = await cluster.start("node-a", tokens=tokens)
    b = await cluster.start("node-b", tokens=tokens)
    await a.call("POST", "/v1/policies", token="tok-legal", body=LEGAL, expect=201)
    now = rfc3339(time.time())
    risk = PolicyEvent("policy.published", {**RISK, "version": 1}, "compliance:0a0b0c", now,
                       role="compliance", team="risk")  # fmt: skip
    await cluster.publish_raw("risk-turns", risk.to_json(), msg_id="risk-turns:1")
    mine = PolicyEvent("policy.published", {**RISK, "id": "legal-fast", "version": 1},
                       "compliance:0a0b0c", now, role="compliance", team="legal")  # fmt: skip
    await cluster.publish_raw("legal-fast", mine.to_json(), msg_id="legal-fast:1")
    for replica in (a, b):

        async def applied(replica: Any = replica) -> bool:
            body = await replica.call("GET", "/v1/policies/legal-fast")
            return "version" in body

        assert await eventually(applied)
        await replica.call("GET", "/v1/policies/risk-turns", expect=404)
