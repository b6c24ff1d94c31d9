"""Doubts told as doubts, through real sockets (docs/audit.md): a Streaming v3 ``Warning`` no
update explains, a Voice Agent echo two updates expect, an unconfirmed push in the rollout
rows. (A gateway push whose frame was handed to a stalled upstream: test_slow_upstream.py.)"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from tests.integration.differential.actors import GatewayStreaming
from tests.integration.service.conftest import (
    ControlPlaneUnderTest,
    Emulator,
    eventually,
)
from tests.integration.service.fleet import Fleet


async def test_a_streaming_doubt_shows_in_the_session_view_until_an_update_sets_the_field(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """An unpredicted Streaming v3 ``Warning`` (the upstream dropped the client's update):
    the session view names the fields in doubt and is not ``synced`` (was: ``synced``,
    running_config claiming the dropped value, nothing said); the client's next update
    setting the field ends the doubt, the view then equal to what the upstream runs."""
    stream = GatewayStreaming("s0", "streaming-v3", "universal-3-5-pro", "gateway")
    try:
        await stream.open(cp.ws_base, "tier=gold")
        sid = stream.session_id = cp.live_by_upstream(stream.upstream_id)
        shown = await cp.session(sid)
        assert (shown["state"], shown["in_doubt"]) == ("synced", [])
        refuse = {"reject_next_update": {"style": "warning", "message": "not now"}}
        await emulator.faults(stream.upstream_id, refuse)
        await stream.update({"max_turn_silence": 2200})
        await eventually(lambda: _doubted(cp, sid), timeout=5)
        shown = await cp.session(sid)
        assert (shown["state"], shown["in_doubt"]) == ("unverified", ["max_turn_silence_ms"])
        truth = (await emulator.session(stream.upstream_id))["config"]
        assert truth["max_turn_silence"] != 2200  # dropped: the record says it may be wrong
        [doubt] = [e for e in await cp.log(sid) if e["cause"] == "upstream"]
        assert doubt["error"].endswith("in doubt: max_turn_silence_ms"), doubt
        assert (await _config_at_now(cp, sid))["in_doubt"] is True  # (audit at says it too)
        await stream.update({"max_turn_silence": 2300})  # (the fault is spent: applied)
        await eventually(lambda: _settled(cp, sid), timeout=5)
        shown = await cp.session(sid)
        truth = (await emulator.session(stream.upstream_id))["config"]
        assert truth["max_turn_silence"] == 2300
        assert shown["running_config"]["max_turn_silence_ms"] == 2300
        assert (shown["state"], shown["in_doubt"]) == ("synced", [])
        answer = await _config_at_now(cp, sid)
        assert (answer["in_doubt"], answer["doubts"]) == (False, []), answer
    finally:
        await stream.close()


async def _config_at_now(cp: ControlPlaneUnderTest, sid: str) -> dict[str, Any]:
    path = f"/v1/sessions/{sid}/config-at?at={time.time()!r}"
    return dict(await cp.call("GET", path, expect=200))


async def _doubted(cp: ControlPlaneUnderTest, sid: str) -> bool:
    return any(e["cause"] == "upstream" for e in await cp.log(sid))


async def _settled(cp: ControlPlaneUnderTest, sid: str) -> bool:
    return (await cp.session(sid))["in_doubt"] == []


async def test_an_echo_two_updates_expect_is_not_pinned_on_the_later_one(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """Voice Agent, upstream slower than the acknowledgement timeout: the client's
    ``conversation.message`` draws a ``param``-less ``session.error`` while our push is
    outstanding (it may be the push's answer: the push ends ``unverified``, not owed), then
    the client's own ``session.update`` asking the same value goes. The push's late echo
    matches both: by order it is the push's if the error was the message's, the client's if
    the error was the push's. The record says so (the client's update ``acked``: what it asked
    runs either way; its entry says whose answer it is cannot be told), and the second echo
    is the push's late answer, not a second acknowledgement of the client's update (was:
    the client's ``acked`` twice, the push ``unverified`` for good though applied)."""
    fleet = Fleet(cp.ws_base)
    try:
        agent = await fleet.agent("team=twin")
        sid = cp.live_by_upstream(agent.upstream_id)
        await emulator.faults(agent.upstream_id, {"latency_ms": 700})  # 0.7 s a message
        await agent.ws.send(json.dumps({"type": "conversation.message", "role": "bogus",
                                        "content": "x"}))  # fmt: skip
        await asyncio.sleep(0.05)
        await cp.publish({"id": "twin", "match": {"labels": {"team": ["twin"]}},
                          "set": {"system_prompt": "Be twin."}})  # fmt: skip
        await asyncio.sleep(0.2)
        await agent.ws.send(json.dumps({"type": "session.update",
                                        "session": {"system_prompt": "Be twin."}}))  # fmt: skip

        async def client_answers() -> list[dict[str, Any]]:
            return [e for e in await cp.log(sid)
                    if e["cause"] == "client" and e["status"] != "sent"]  # fmt: skip

        answers = await eventually(client_answers, timeout=10)
        await asyncio.sleep(1.5)  # the client update's own echo comes
        answers = await client_answers()
        # the first echo: what the client asked runs, whose answer it is is said unknown
        assert [a["status"] for a in answers] == ["acked"], answers  # (was: acked twice)
        assert "cannot be told" in answers[0]["error"], answers[0]
        # the second echo proves the first was our push's (answered in order): late
        pushes = [(e["status"], e["error"] or "") for e in await cp.log(sid)
                  if e["cause"] == "policy" and e["status"] != "sent"]  # fmt: skip
        assert [s for s, _ in pushes] == ["unverified", "acked"], pushes
        assert pushes[1][1].startswith("answered after"), pushes
        upstream = await emulator.session(agent.upstream_id)
        assert upstream["config"]["system_prompt"] == "Be twin."
        assert (await cp.session(sid))["running_config"]["system_prompt"] == "Be twin."
    finally:
        await fleet.close()


async def test_rollout_status_counts_an_unconfirmed_voice_agent_push_in_doubt(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """A Voice Agent push no answer confirmed in time is ``unverified`` AND ``in_doubt`` in
    the rollout rows (never read as rolled out; a Streaming v3 write is ``unverified`` only);
    its late answer moves it to ``acknowledged``."""
    fleet = Fleet(cp.ws_base)
    try:
        agent = await fleet.agent("team=doubt")
        await emulator.faults(agent.upstream_id, {"latency_ms": 1600})  # past the 1 s timeout
        await cp.publish({"id": "slow", "match": {"labels": {"team": ["doubt"]}},
                          "set": {"system_prompt": "Be slow."}})  # fmt: skip

        async def totals() -> dict[str, int]:
            body = await cp.call("GET", "/v1/policies/slow/rollout", expect=200)
            return dict(body["totals"])

        async def timed_out() -> bool:
            return (await totals())["unverified"] == 1

        await eventually(timed_out, timeout=5)
        now = await totals()
        assert (now["unverified"], now["in_doubt"], now["acknowledged"]) == (1, 1, 0), now

        async def answered() -> bool:
            return (await totals())["acknowledged"] == 1

        await eventually(answered, timeout=5)  # the late answer
        assert (await totals())["in_doubt"] == 0
    finally:
        await fleet.close()


async def _doubted_fields(cp: ControlPlaneUnderTest, sid: str) -> list[str]:
    """The fields config-at's ``doubts`` (now) leave unknown: each push doubt's delta."""
    seqs = {d["seq"] for d in (await _config_at_now(cp, sid))["doubts"]}
    return sorted({f for e in await cp.log(sid) if e["seq"] in seqs for f in e["delta"]})


async def test_an_unanswered_voice_agent_push_is_in_doubt_in_the_session_view_as_config_at(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """A Voice Agent push no answer confirmed in time: the session view's ``in_doubt`` names
    its fields, the same as config-at's ``doubts`` (was: ``in_doubt: []`` while config-at and
    the rollout said in doubt); its late answer ends the doubt in both."""
    fleet = Fleet(cp.ws_base)
    try:
        agent = await fleet.agent("team=viewdoubt")
        sid = cp.live_by_upstream(agent.upstream_id)
        await emulator.faults(agent.upstream_id, {"latency_ms": 1600})  # past the 1 s timeout
        await cp.publish({"id": "vd", "match": {"labels": {"team": ["viewdoubt"]}},
                          "set": {"system_prompt": "Be in doubt."}})  # fmt: skip

        async def timed_out() -> bool:
            return any(e["status"] == "unverified" for e in await cp.log(sid))

        await eventually(timed_out, timeout=5)
        shown, answer = await cp.session(sid), await _config_at_now(cp, sid)
        assert answer["in_doubt"] is True
        assert await _doubted_fields(cp, sid) == ["system_prompt"]
        assert (shown["state"], shown["in_doubt"]) == ("unverified", ["system_prompt"]), shown
        assert shown["running_config"].get("system_prompt") != "Be in doubt."

        async def answered() -> bool:
            return any(e["status"] == "acked" and e["cause"] == "policy"
                       for e in await cp.log(sid))  # fmt: skip

        await eventually(answered, timeout=5)  # the late answer
        await eventually(lambda: _settled(cp, sid), timeout=5)
        shown, answer = await cp.session(sid), await _config_at_now(cp, sid)
        assert (answer["in_doubt"], answer["doubts"]) == (False, []), answer
        assert (shown["state"], shown["in_doubt"]) == ("synced", []), shown
        assert shown["running_config"]["system_prompt"] == "Be in doubt."
    finally:
        await fleet.close()


async def test_an_ended_sessions_unanswered_push_stays_in_doubt_in_its_view(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """A push that ended unanswered when its session's client left (the upstream stopped
    reading: its frame may still run): the ended session's view keeps its fields in doubt
    (the registry record), as config-at does (was: ``in_doubt: []``, the old value shown)."""
    fleet = Fleet(cp.ws_base)
    try:
        gone = await fleet.agent("team=gone")
        sid = cp.live_by_upstream(gone.upstream_id)
        await emulator.faults(gone.upstream_id, {"stop_reading": True})
        await cp.publish({"id": "gone", "match": {"labels": {"team": ["gone"]}},
                          "set": {"system_prompt": "Never answered."}})  # fmt: skip
        ls = cp.service.engine.live[sid]
        await eventually(lambda: ls.push.in_flight is not None and not ls.push.waiting)
        await gone.ws.close()  # the session ends before the upstream answers
        await eventually(lambda: sid not in cp.service.engine.live, timeout=10)

        async def ended() -> bool:
            return (await cp.session(sid))["state"] == "ended"

        await eventually(ended, timeout=5)
        shown = await cp.session(sid)
        assert await _doubted_fields(cp, sid) == ["system_prompt"]
        assert shown["in_doubt"] == ["system_prompt"], shown
    finally:
        await fleet.close()
