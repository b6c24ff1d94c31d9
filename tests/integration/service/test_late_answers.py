"""Late Voice Agent answers through the gateway, against the emulator's ground truth: an answer
that comes after its acknowledgement timeout (the record already says ``unverified``) is
recorded when it comes, as a later entry with its real status — the chain stays append-only
(the ``unverified`` entry is never rewritten) and the record follows what the upstream runs.

- the connect: ``session.ready`` after the connect timed out → ``connect`` v1 ``acked``
  (late), the session's exposure, ``versions.acked`` 1, rollout status acknowledged;
- a push: ``session.updated`` after the push timed out → ``policy`` vN ``acked`` (late), the
  pushed config in effect from then on (``config-at``), the session ``synced``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from controlplane.config import Settings
from tests.integration.differential.actors import Actor, ControlApp, GatewayAgent
from tests.integration.differential.views import diff_views, emulator_view, recorded_view
from tests.integration.service.conftest import (
    ADMIN,
    ControlPlaneUnderTest,
    Emulator,
    eventually,
    serving,
)

ACK_TIMEOUT_S = 0.4
LATENCY_MS = 900  # the emulator's wait before handling each message: > ACK_TIMEOUT_S
KEY = "late"
LATE = "answered after the acknowledgement timeout"


@pytest.fixture
async def cp_quick(cp_settings: Callable[..., Settings]) -> AsyncIterator[ControlPlaneUnderTest]:
    async with serving(cp_settings(ack_timeout_s=ACK_TIMEOUT_S)) as cp:
        yield cp


async def _default_latency(emulator: Emulator, ms: float) -> None:
    async with emulator.http.post(f"{emulator.base}/_emulator/faults",
                                  json={"latency_ms": ms}) as resp:  # fmt: skip
        assert resp.status in (200, 204), await resp.text()


def _statuses(log: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    return [(e["cause"], e["status"], e["version"]) for e in log]


async def _record_is_truth(
    cp: ControlPlaneUnderTest, emulator: Emulator, agent: Actor, sid: str
) -> dict[str, Any]:
    await asyncio.sleep(0.01)
    answer = await cp.call("GET", f"/v1/sessions/{sid}/config-at?at={time.time()}", expect=200)
    assert answer["rebuild"]["verified"] is True, answer
    truth = emulator_view(agent.kind, agent.model, (await emulator.session(agent.upstream_id))
                          ["config"])  # fmt: skip
    assert diff_views(recorded_view(agent.kind, agent.model, answer["config"]), truth) == {}
    running = cp.service.engine.live[sid].push.base
    assert diff_views(recorded_view(agent.kind, agent.model, running), truth) == {}
    return dict(answer)


async def test_a_session_ready_after_the_connect_timed_out_is_recorded_acked(
    cp_quick: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    cp = cp_quick
    await cp.publish({"id": KEY, "match": {"kind": ["voice-agent-v1"]},
                      "experiment": {"key": KEY, "variants": [
                          {"name": "warm", "weight": 100, "set": {"keyterms": ["welcome"]}},
                          {"name": "control", "weight": 0, "set": {}}]}})  # fmt: skip
    await _default_latency(emulator, LATENCY_MS)  # the first message waits: ready is late
    agent = GatewayAgent("a0", "voice-agent-v1", "voice-agent", "gateway")
    try:
        await agent.open(cp.ws_base, "tier=gold")
        await _default_latency(emulator, 0)
        await emulator.faults(agent.upstream_id, {"latency_ms": 0})
        sid = agent.session_id = cp.live_by_upstream(agent.upstream_id)

        async def answered() -> list[dict[str, Any]] | None:
            log = await cp.log(sid)
            return log if len(log) >= 3 else None

        log = await eventually(answered)
        assert _statuses(log) == [("connect", "sent", 1), ("connect", "unverified", 1),
                                  ("connect", "acked", 1)]  # fmt: skip
        assert "no session.ready within" in log[1]["error"]
        assert LATE in log[2]["error"]
        assert log[2]["config_hash"] == log[0]["config_hash"]
        assert [(p["id"], p["variant"]) for p in log[2]["policies"]] == [(KEY, "warm")]
        session = await cp.session(sid)
        assert session["versions"]["acked"] == 1 and session["state"] == "synced", session
        body = await cp.call("GET", f"/v1/experiments/{KEY}/assignments", expect=200)
        [row] = body["items"]
        assert row["exposed_seq"] == log[2]["seq"], row
        totals = (await cp.call("GET", f"/v1/policies/{KEY}/rollout", expect=200))["totals"]
        assert (totals["acknowledged"], totals["unverified"]) == (1, 0), totals
        answer = await _record_is_truth(cp, emulator, agent, sid)
        assert "acknowledged by the upstream" in answer["established_by"]["meaning"]
    finally:
        await _default_latency(emulator, 0)
        await agent.close()


async def test_a_session_updated_after_the_push_timed_out_is_recorded_acked(
    cp_quick: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    cp = cp_quick
    agent = GatewayAgent("a0", "voice-agent-v1", "voice-agent", "gateway")
    try:
        await agent.open(cp.ws_base, "tier=gold")
        sid = agent.session_id = cp.live_by_upstream(agent.upstream_id)
        await emulator.faults(agent.upstream_id, {"latency_ms": LATENCY_MS})
        await cp.publish({"id": "tone", "match": {"kind": ["voice-agent-v1"]},
                          "set": {"system_prompt": "Be late."}})  # fmt: skip

        async def answered() -> list[dict[str, Any]] | None:
            log = [e for e in await cp.log(sid) if e["cause"] == "policy"]
            return log if len(log) >= 3 else None

        log = await eventually(answered)
        assert [(e["status"], e["version"]) for e in log] == [
            ("sent", 2), ("unverified", 2), ("acked", 2)]  # fmt: skip
        assert "no acknowledgement within" in log[1]["error"]
        assert LATE in log[2]["error"]
        assert log[2]["config_hash"] == log[0]["config_hash"]  # the pushed config runs
        assert (await emulator.session(agent.upstream_id))["config"]["system_prompt"] == (
            "Be late.")  # fmt: skip
        session = await cp.session(sid)
        assert session["versions"]["acked"] == 2 and session["state"] == "synced", session
        totals = (await cp.call("GET", "/v1/policies/tone/rollout", expect=200))["totals"]
        assert (totals["acknowledged"], totals["unverified"]) == (1, 0), totals
        answer = await _record_is_truth(cp, emulator, agent, sid)
        assert answer["established_by"]["seq"] == log[2]["seq"]
        assert answer["config"]["system_prompt"] == "Be late."
        # between the timeout and the late answer the record said what it knew then
        between = (log[1]["at"] + log[2]["at"]) / 2
        earlier = await cp.call("GET", f"/v1/sessions/{sid}/config-at?at={between!r}",
                                expect=200)  # fmt: skip
        assert earlier["config"].get("system_prompt") != "Be late."
    finally:
        await agent.close()


@pytest.mark.parametrize(
    ("kind", "model", "late_status"),
    [
        ("voice-agent-v1", "voice-agent", "acked"),
        ("streaming-v3", "universal-3-5-pro", "unverified"),
    ],
)
async def test_a_control_channel_report_after_the_timeout_is_recorded(
    cp_quick: ControlPlaneUnderTest, emulator: Emulator, kind: str, model: str, late_status: str
) -> None:
    """The app's ``applied`` after the acknowledgement timeout (it was refused
    ``unknown_version``, and the record said ``unverified`` while its upstream ran the push).
    Streaming v3: ``unverified`` without acknowledgement, applied as the app reported."""
    cp = cp_quick
    app = ControlApp("c0", kind, model, "control")
    try:
        await app.open(f"ws://127.0.0.1:{emulator.port}", cp.ws_base, ADMIN, {"tier": "gold"})
        sid = app.session_id
        app.report_delay_s = LATENCY_MS / 1000
        await cp.publish({"id": "slow", "match": {"kind": [kind]},
                          "set": {"keyterms": ["late"]}})  # fmt: skip

        async def answered() -> list[dict[str, Any]] | None:
            log = [e for e in await cp.log(sid) if e["cause"] == "policy"]
            return log if len(log) >= 3 else None

        log = await eventually(answered)
        assert [e["status"] for e in log] == ["sent", "unverified", late_status], log
        assert "no acknowledgement within" in log[1]["error"] and LATE in log[2]["error"]
        assert app.errors == []  # the report was taken
        await eventually(lambda: not app.busy)
        await _record_is_truth(cp, emulator, app, sid)
        session = await cp.session(sid)
        # Streaming v3 acknowledges nothing: no version is ever claimed acknowledged
        assert session["versions"]["acked"] == (2 if late_status == "acked" else None), session
    finally:
        await app.close()


async def test_an_answer_owed_to_a_timed_out_push_is_never_taken_for_the_next_ones(
    cp_quick: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """The upstream answers in order: the first answer after a push timed out is that push's
    (here a refusal of its system_prompt), even though the next push, already outstanding,
    touches system_prompt too (differential seed 11: the next push was recorded rejected
    before the upstream had even handled it)."""
    cp = cp_quick
    agent = GatewayAgent("a0", "voice-agent-v1", "voice-agent", "gateway")
    try:
        await agent.open(cp.ws_base, "tier=gold")
        sid = agent.session_id = cp.live_by_upstream(agent.upstream_id)
        fail = {"system_prompt": "invalid_value"}
        await emulator.faults(agent.upstream_id, {"latency_ms": LATENCY_MS, "fail_fields": fail})
        doc = {"id": "tone", "match": {"kind": ["voice-agent-v1"]}, "set": {"system_prompt": "A"}}
        await cp.publish(doc)

        def timed_out() -> bool:
            return cp.service.engine.live[sid].push.last_status == "unverified"

        await eventually(timed_out)
        await cp.publish({**doc, "set": {"system_prompt": "A", "max_turn_silence_ms": 1800}})

        async def settled() -> list[dict[str, Any]] | None:
            log = [e for e in await cp.log(sid) if e["cause"] == "policy"]
            by = {v: [e["status"] for e in log if e["version"] == v] for v in (2, 3)}
            ls = cp.service.engine.live[sid]
            link = ls.transport.link  # type: ignore[attr-defined]
            idle = ls.push.in_flight is None and link.model.outstanding is None
            done = idle and not link.model.owed and len(by[2]) == len(by[3]) == 3
            return log if done else None

        log = await eventually(settled, timeout=8)
        v2 = [(e["status"], e["error"]) for e in log if e["version"] == 2]
        assert [s for s, _ in v2] == ["sent", "unverified", "rejected"], log
        assert LATE in v2[2][1] and "system_prompt" in v2[2][1]
        timeline = (await emulator.session(agent.upstream_id))["timeline"]
        for version in (2, 3):  # each answer recorded once the upstream handled that push
            entries = [e for e in log if e["version"] == version]
            handled = [t["at"] for t in timeline if t["message"] == entries[0]["wire"]]
            assert handled and entries[2]["at"] >= min(handled), (entries, handled)
            assert entries[2]["status"] == "rejected" and LATE in entries[2]["error"]
        assert (await emulator.session(agent.upstream_id))["config"]["system_prompt"] == ""
        await _record_is_truth(cp, emulator, agent, sid)
    finally:
        await agent.close()


async def test_a_resumed_session_is_recorded_on_what_the_upstream_resumed(
    cp_quick: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """The client's session.resume after its upstream connection dropped: the record starts
    from what the resumed upstream session runs (session.ready's echo: the client's own
    earlier updates included), not from defaults; a policy's current value is pushed where
    it differs, and the client's own fields are kept (was: config-at said the defaults while
    the upstream ran system_prompt 'mine', keyterms ['x'], max_silence 1800)."""
    cp = cp_quick
    agent = GatewayAgent("a0", "voice-agent-v1", "voice-agent", "gateway")
    resumed = GatewayAgent("a1", "voice-agent-v1", "voice-agent", "gateway")
    try:
        await agent.open(cp.ws_base, "tier=gold")
        upstream_id = agent.upstream_id
        await agent.update({"system_prompt": "mine", "input": {"keyterms": ["x"]}})
        await eventually(lambda: agent.answered)
        await emulator.faults(upstream_id, {"drop_after_messages": 1})
        await agent.update({"input": {"turn_detection": {"max_silence": 1800}}})
        old = cp.live_by_upstream(upstream_id)
        await eventually(lambda: old not in cp.service.engine.live)
        await cp.publish({"id": "tone", "match": {"kind": ["voice-agent-v1"]},
                          "set": {"min_turn_silence_ms": 240}})  # fmt: skip
        await resumed.open_resume(cp.ws_base, upstream_id)
        sid = resumed.session_id = cp.live_by_upstream(upstream_id)

        async def pushed() -> list[dict[str, Any]] | None:
            log = await cp.log(sid)
            return log if [e["status"] for e in log][-2:] == ["sent", "acked"] else None

        log = await eventually(pushed)
        assert _statuses(log)[:2] == [("connect", "sent", 1), ("connect", "acked", 1)]
        assert log[1]["delta"]["system_prompt"] == "mine"
        assert log[-1]["delta"] == {"min_turn_silence_ms": 240}  # only the policy's change
        config = (await emulator.session(upstream_id))["config"]
        assert config["system_prompt"] == "mine" and config["input"]["keyterms"] == ["x"]
        assert config["input"]["turn_detection"]["min_silence"] == 240
        answer = await _record_is_truth(cp, emulator, resumed, sid)
        assert answer["config"]["max_turn_silence_ms"] == 1800
    finally:
        await agent.close()
        await resumed.close()


async def test_a_push_unanswered_when_the_client_leaves_is_recorded_as_answered(
    cp_quick: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """The client leaves right after our push went (the upstream answers it 300 ms later):
    the upstream leg waits for that answer (at most the acknowledgement timeout) before it
    closes, so the record says acked, as the upstream ran it (was: unverified, "the session
    ended before the upstream answered", config-at without the push)."""
    cp = cp_quick
    agent = GatewayAgent("a0", "voice-agent-v1", "voice-agent", "gateway")
    await agent.open(cp.ws_base, "tier=gold")
    sid = agent.session_id = cp.live_by_upstream(agent.upstream_id)
    await emulator.faults(agent.upstream_id, {"latency_ms": 300})
    await cp.publish({"id": "tone", "set": {"system_prompt": "Bye."}})
    await agent.close()
    await eventually(lambda: sid not in cp.service.engine.live)
    log = [e for e in await cp.log(sid) if e["cause"] == "policy"]
    assert [e["status"] for e in log] == ["sent", "acked"], log
    assert (await emulator.session(agent.upstream_id))["config"]["system_prompt"] == "Bye."
    answer = await cp.call("GET", f"/v1/sessions/{sid}/config-at?at={time.time()}", expect=200)
    assert answer["config"]["system_prompt"] == "Bye." and answer["rebuild"]["verified"]


async def test_a_late_answer_behind_a_newer_push_is_undone_where_no_longer_wanted(
    cp_quick: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """Version 2 times out; version 3 (the policy no longer sets max_turn_silence_ms) is
    taken without it; then version 2's late answer shows the upstream applied it after all.
    The session must not stay "synced" on a field no policy wants: a new version clears it
    (differential seed 1234: synced, effective_config without the field, upstream 1400)."""
    cp = cp_quick
    agent = GatewayAgent("a0", "voice-agent-v1", "voice-agent", "gateway")
    try:
        await agent.open(cp.ws_base, "tier=gold")
        sid = agent.session_id = cp.live_by_upstream(agent.upstream_id)
        await emulator.faults(agent.upstream_id, {"latency_ms": LATENCY_MS})
        doc = {"id": "tone", "match": {"kind": ["voice-agent-v1"]}}
        await cp.publish({**doc, "set": {"system_prompt": "A", "max_turn_silence_ms": 1400}})

        def timed_out() -> bool:
            return cp.service.engine.live[sid].push.last_status == "unverified"

        await eventually(timed_out)
        await cp.publish({**doc, "set": {"system_prompt": "B"}})
        await asyncio.sleep(3 * LATENCY_MS / 1000)
        await emulator.faults(agent.upstream_id, {"latency_ms": 0})

        async def settled() -> dict[str, Any] | None:
            session = await cp.session(sid)
            ls = cp.service.engine.live[sid]
            link = ls.transport.link  # type: ignore[attr-defined]
            idle = link.model.outstanding is None and not link.model.owed
            return session if idle and session["state"] == "synced" else None

        session = await eventually(settled, timeout=8)
        config = (await emulator.session(agent.upstream_id))["config"]
        assert config["system_prompt"] == "B", config
        assert config["input"]["turn_detection"]["max_silence"] != 1400, config
        assert "max_turn_silence_ms" not in session["effective_config"]
        await _record_is_truth(cp, emulator, agent, sid)
    finally:
        await agent.close()


async def test_a_resumed_call_loses_a_retired_policys_value_and_keeps_the_clients(
    cp_quick: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """Resumed after a drop, during which the policy that set system_prompt was retired: the
    resumed session runs that policy's value (session.ready's echo), but it is not the
    client's own (the earlier session's record says a policy set it), so it is cleared as
    the retirement would have cleared it; the client's own values (recorded, or sent just
    before the drop) stay. Was: every field no policy sets was taken as the client's own
    (client_config said system_prompt 'Policy A' for good)."""
    cp = cp_quick
    await cp.publish({"id": "tone", "match": {"kind": ["voice-agent-v1"]},
                      "set": {"system_prompt": "Policy A"}})  # fmt: skip
    agent = GatewayAgent("a0", "voice-agent-v1", "voice-agent", "gateway")
    resumed = GatewayAgent("a1", "voice-agent-v1", "voice-agent", "gateway")
    try:
        await agent.open(cp.ws_base, "tier=gold")
        upstream_id = agent.upstream_id
        await agent.update({"input": {"keyterms": ["x"]}})
        await eventually(lambda: agent.answered)
        await emulator.faults(upstream_id, {"drop_after_messages": 1})
        await agent.update({"input": {"turn_detection": {"max_silence": 1800}}})
        old = cp.live_by_upstream(upstream_id)
        await eventually(lambda: old not in cp.service.engine.live)
        await cp.call("DELETE", "/v1/policies/tone", expect=200)
        await resumed.open_resume(cp.ws_base, upstream_id)
        sid = resumed.session_id = cp.live_by_upstream(upstream_id)

        async def cleared() -> dict[str, Any] | None:
            config = (await emulator.session(upstream_id))["config"]
            return config if not config.get("system_prompt") else None

        config = await eventually(cleared)
        assert config["input"]["keyterms"] == ["x"]
        assert config["input"]["turn_detection"]["max_silence"] == 1800
        await eventually(lambda: not cp.service.engine.live[sid].push.in_flight)
        await _record_is_truth(cp, emulator, resumed, sid)
        body = await cp.session(sid)
        assert "system_prompt" not in body["client_config"], body["client_config"]
        assert body["client_config"]["keyterms"] == ["x"]
    finally:
        await agent.close()
        await resumed.close()
