"""Connect exposure through real sockets (gateway + bundled emulator, control channel): a
session that joins while an experiment already targets it is exposed exactly when, and only
if, its upstream runs the variant's values — checked against the emulator's ground truth
(``/_emulator/sessions/{id}``), the session's version log, the experiment's assignments and
exposure count, and the rollout counts.

- Voice Agent gateway: the variant is merged into the client's first ``session.update``; the
  upstream acknowledges it with ``session.ready`` (logged ``connect acked``, version 1: the
  exposure), or refuses it with ``session.error`` (``connect rejected``: no exposure; the
  client's next ``session.update`` is a new connect, version 2, answered the same way).
- Streaming v3 gateway: merged into the connect query; the protocol has no acknowledgement, so
  the session is exposed at ``connect sent`` and nothing is ever ``acked``.
- Control channel: the app registers with its own config and gets a ``connect`` push; it is
  exposed when the app reports the push applied (``acked`` after the Voice Agent upstream's
  answer, ``unverified`` without error on Streaming v3).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import websockets

from sessions.exposures import exposure_problem
from tests.integration.differential.actors import (
    Actor,
    ControlApp,
    GatewayAgent,
    GatewayStreaming,
)
from tests.integration.differential.views import diff_views, emulator_view, recorded_view
from tests.integration.service.conftest import ADMIN, ControlPlaneUnderTest, Emulator, eventually

KEY = "joiners"
WARM = ("welcome",)


def _experiment(kinds: list[str]) -> dict[str, Any]:
    return {"id": KEY, "match": {"kind": kinds},
            "experiment": {"key": KEY, "variants": [
                {"name": "warm", "weight": 100, "set": {"keyterms": list(WARM)}},
                {"name": "control", "weight": 0, "set": {}}]}}  # fmt: skip


async def _assignments(cp: ControlPlaneUnderTest) -> dict[str, dict[str, Any]]:
    body = await cp.call("GET", f"/v1/experiments/{KEY}/assignments", expect=200)
    return {row["session_id"]: row for row in body["items"]}


async def _statuses(cp: ControlPlaneUnderTest, sid: str) -> list[tuple[str, str, int]]:
    return [(e["cause"], e["status"], e["version"]) for e in await cp.log(sid)]


async def _totals(cp: ControlPlaneUnderTest) -> dict[str, int]:
    body = await cp.call("GET", f"/v1/policies/{KEY}/rollout", expect=200)
    return dict(body["totals"])


async def _recv_type(ws: Any, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if msg.get("type") == kind:
            return dict(msg)


async def _truth_matches_record(cp: ControlPlaneUnderTest, emulator: Emulator, actor: Actor,
                                sid: str) -> dict[str, Any]:  # fmt: skip
    """The emulator runs the variant, and ``config-at`` now says exactly what it runs."""
    upstream = await emulator.session(actor.upstream_id)
    truth = emulator_view(actor.kind, actor.model, upstream["config"])
    assert truth["keyterms"] == WARM, truth
    await asyncio.sleep(0.01)
    answer = await cp.call("GET", f"/v1/sessions/{sid}/config-at?at={time.time()}", expect=200)
    assert answer["verified"] is True, answer
    recorded = recorded_view(actor.kind, actor.model, answer["config"])
    assert diff_views(recorded, truth) == {}
    return dict(answer)


async def test_a_voice_agent_gateway_session_is_exposed_when_the_upstream_acknowledges_its_connect(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    await cp.publish(_experiment(["voice-agent-v1"]))
    agent = GatewayAgent("a0", "voice-agent-v1", "voice-agent", "gateway")
    await agent.open(cp.ws_base, "tier=gold")
    try:
        sid = cp.live_by_upstream(agent.upstream_id)

        async def exposed() -> dict[str, Any] | None:
            row = (await _assignments(cp)).get(sid)
            return row if row is not None and row["exposed_at"] is not None else None

        row = await eventually(exposed)
        log = await cp.log(sid)
        assert [(e["cause"], e["status"], e["version"]) for e in log] == [
            ("connect", "sent", 1), ("connect", "acked", 1)]  # fmt: skip
        acked = log[1]
        assert acked["delta"] == {} and acked["error"] is None
        assert [(p["id"], p["variant"]) for p in acked["policies"]] == [(KEY, "warm")]
        assert acked["config_hash"] == log[0]["config_hash"]  # what the connect carried
        assert row["exposed_seq"] == acked["seq"] and row["variant"] == "warm"
        assert row["upstream_session_id"] == agent.upstream_id
        summary = await cp.call("GET", f"/v1/experiments/{KEY}", expect=200)
        assert summary["exposed"] == 1
        totals = await _totals(cp)
        assert (totals["targeted"], totals["acknowledged"]) == (1, 1), totals
        answer = await _truth_matches_record(cp, emulator, agent, sid)
        assert answer["established_by"]["seq"] == log[0]["seq"]
        assert "acknowledged by the upstream" in answer["established_by"]["meaning"]
    finally:
        await agent.close()


async def test_a_voice_agent_connect_the_upstream_refuses_is_rejected_then_the_retry_exposes(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    await cp.publish(_experiment(["voice-agent-v1"]))
    async with websockets.connect(
        cp.ws_base + "/v1/ws", additional_headers={"Authorization": "Bearer test-key"}
    ) as ws:
        # valid for the control plane (no canonical field is wrong), refused by the upstream
        await ws.send(json.dumps({"type": "session.update",
                                  "session": {"input": {"voice_focus": "mid-field"}}}))  # fmt: skip
        error = await _recv_type(ws, "session.error")
        assert error["param"] == "input.voice_focus"
        [sid] = list(cp.service.engine.live)  # the session stays open, as the upstream's does
        log = await cp.log(sid)
        assert [(e["cause"], e["status"], e["version"]) for e in log] == [
            ("connect", "sent", 1), ("connect", "rejected", 1)]  # fmt: skip
        assert log[1]["error"] is not None and "voice_focus" in log[1]["error"]
        [row] = (await _assignments(cp)).values()  # assigned by its connect, not exposed
        assert row["session_id"] == sid and row["exposed_at"] is None
        assert (await cp.session(sid))["versions"]["acked"] == 0
        assert (await cp.session(sid))["running_config"] is None  # no upstream session runs
        answer = await cp.call("GET", f"/v1/sessions/{sid}/config-at?at={time.time()}",
                               expect=200)  # fmt: skip
        assert "refused by the upstream" in answer["established_by"]["meaning"]
        listed = await emulator.http.get(f"{emulator.base}/_emulator/sessions")
        assert [s for s in (await listed.json())["items"] if s["kind"] == "voice-agent-v1"] == []

        # the client corrects it: the upstream takes it as the first message, the policies'
        # values merged in; that connect is answered, logged and exposed
        await ws.send(json.dumps({"type": "session.update",
                                  "session": {"system_prompt": "Be kind."}}))  # fmt: skip
        ready = await _recv_type(ws, "session.ready")
        log = await cp.log(sid)
        assert [(e["cause"], e["status"], e["version"]) for e in log[2:]] == [
            ("connect", "sent", 2), ("connect", "acked", 2)]  # fmt: skip
        assert log[2]["wire"]["first_message"]["session"]["input"]["keyterms"] == list(WARM)
        row = (await _assignments(cp))[sid]
        assert row["exposed_seq"] == log[3]["seq"] and row["variant"] == "warm"
        assert row["upstream_session_id"] == ready["session_id"]
        session = await cp.session(sid)
        assert session["versions"] == {"desired": 2, "sent": 2, "acked": 2}
        assert session["state"] == "synced"
        assert session["running_config"]["system_prompt"] == "Be kind."  # the retry runs
        totals = await _totals(cp)
        assert (totals["targeted"], totals["acknowledged"], totals["rejected"]) == (1, 1, 0)
        agent = GatewayAgent("a0", "voice-agent-v1", "voice-agent", "gateway")
        agent.upstream_id = ready["session_id"]
        answer = await _truth_matches_record(cp, emulator, agent, sid)
        assert answer["established_by"]["seq"] == log[3]["seq"]
        upstream = await emulator.session(agent.upstream_id)
        assert upstream["config"]["system_prompt"] == "Be kind."
        assert answer["config"]["system_prompt"] == "Be kind."


async def test_connect_exposure_on_every_transport_matches_what_the_upstream_runs(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """The differential of connect exposure: one session per transport joins the running
    experiment; each is exposed once, at the entry from which its upstream runs the variant."""
    await cp.publish(_experiment(["voice-agent-v1", "streaming-v3"]))
    agent = GatewayAgent("a0", "voice-agent-v1", "voice-agent", "gateway")
    stream = GatewayStreaming("s0", "streaming-v3", "universal-3-5-pro", "gateway")
    app_agent = ControlApp("ca", "voice-agent-v1", "voice-agent", "control")
    app_stream = ControlApp("cs", "streaming-v3", "universal-3-5-pro", "control")
    emulator_ws = f"ws://127.0.0.1:{emulator.port}"
    actors: list[Actor] = [agent, stream, app_agent, app_stream]
    try:
        await agent.open(cp.ws_base, "tier=gold")
        await stream.open(cp.ws_base, "tier=gold")
        await app_agent.open(emulator_ws, cp.ws_base, ADMIN, {"tier": "gold"})
        await app_stream.open(emulator_ws, cp.ws_base, ADMIN, {"tier": "gold"})
        for actor in (agent, stream):
            actor.session_id = cp.live_by_upstream(actor.upstream_id)
        # where each one's upstream starts running the variant: (cause, status) of that entry
        running_at = {
            agent.session_id: [("connect", "sent", 1), ("connect", "acked", 1)],
            stream.session_id: [("connect", "sent", 1)],  # no acknowledgement exists
            app_agent.session_id: [("connect", "sent", 1), ("connect", "sent", 2),
                                   ("connect", "acked", 2)],
            app_stream.session_id: [("connect", "sent", 1), ("connect", "sent", 2),
                                    ("connect", "unverified", 2)],
        }  # fmt: skip

        async def all_exposed() -> dict[str, dict[str, Any]] | None:
            rows = await _assignments(cp)
            done = all(rows.get(s, {}).get("exposed_at") for s in running_at)
            return rows if done and not any(a.busy for a in actors) else None

        rows = await eventually(all_exposed, timeout=10)
        assert set(rows) == set(running_at)
        summary = await cp.call("GET", f"/v1/experiments/{KEY}", expect=200)
        assert summary["exposed"] == 4
        for actor in actors:
            sid = actor.session_id
            log = await cp.log(sid)
            assert [(e["cause"], e["status"], e["version"]) for e in log] == running_at[sid]
            assert rows[sid]["exposed_seq"] == log[-1]["seq"], (actor.name, rows[sid], log)
            assert exposure_problem(rows[sid], log) is None
            if actor is stream:
                assert all(e["status"] != "acked" for e in log)
            await _truth_matches_record(cp, emulator, actor, sid)
        totals = await _totals(cp)
        assert totals["targeted"] == 4
        assert (totals["acknowledged"], totals["unchanged"], totals["unverified"]) == (2, 1, 1)
    finally:
        for actor in actors:
            await actor.close()
