"""Issue 17, cases 2 and 5 through real sockets (gateway + bundled emulator, control channel):
a refused (field, value) is quarantined for its session and charged only to the policy that
owns the field; a session a policy version targets without changing anything records that
version (`unchanged`), so `config-at` lists every policy version in effect."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets

from controlplane import cli
from tests.integration.service.conftest import ADMIN, ControlPlaneUnderTest, Emulator, eventually
from tests.integration.service.fleet import Fleet, metric

AT_VERSION = "controlplane_sessions_at_version"


@pytest.fixture
async def fleet(cp: ControlPlaneUnderTest) -> AsyncIterator[Fleet]:
    f = Fleet(cp.ws_base)
    try:
        yield f
    finally:
        await f.close()


async def rollout(cp: ControlPlaneUnderTest, policy_id: str) -> dict[str, Any]:
    return dict(await cp.call("GET", f"/v1/policies/{policy_id}/rollout", expect=200))


async def entries(cp: ControlPlaneUnderTest, session_id: str, **match: Any) -> list[dict[str, Any]]:
    found = await cp.log(session_id)
    return [e for e in found if all(e.get(k) == v for k, v in match.items())]


async def gauge(cp: ControlPlaneUnderTest, policy: str, version: int) -> float:
    cp.service.engine._export_gauges()  # the registry-sync cadence, without waiting for it
    return await metric(cp.http, cp.base, AT_VERSION, policy=policy, version=str(version))


async def test_a_refused_field_is_never_resent_and_counts_only_against_its_policy(
    cp: ControlPlaneUnderTest, emulator: Emulator, fleet: Fleet
) -> None:
    agent = await fleet.agent("team=a")
    sid = cp.live_by_upstream(agent.upstream_id)
    # the upstream refuses any system_prompt: session.error{param: "system_prompt"}, and
    # nothing of that update is applied (immutable_policy reject_message)
    await emulator.faults(agent.upstream_id, {"fail_fields": {"system_prompt": "invalid_value"}})
    match = {"labels": {"team": ["a"]}}
    await cp.publish({"id": "persona", "priority": 20, "match": match,
                      "set": {"system_prompt": "Pitch hard.", "vad_threshold": 0.3}})  # fmt: skip
    # the refusal names the field: its value is quarantined, the rest of the version is
    # pushed again without it and applied
    rejected = await eventually(lambda: entries(cp, sid, status="rejected", cause="policy"))
    assert "invalid_value" in rejected[0]["error"]
    await eventually(lambda: entries(cp, sid, status="acked", cause="policy"))
    upstream = (await emulator.session(agent.upstream_id))["config"]
    assert upstream["input"]["turn_detection"]["vad_threshold"] == 0.3
    assert upstream["system_prompt"] != "Pitch hard."

    # an unrelated policy: its push does not carry the refused field again, and is applied
    await cp.publish({"id": "terms", "priority": 10, "match": match,
                      "set": {"keyterms": ["alpha"]}})  # fmt: skip

    async def terms_acked() -> bool:
        acked = await entries(cp, sid, status="acked", cause="policy")
        return any(p["id"] == "terms" for e in acked for p in e["policies"])

    await eventually(terms_acked)
    updates = await emulator.updates(agent.upstream_id, "session.update")
    with_prompt = [u for u in updates if "system_prompt" in u["session"]]
    refused = {"system_prompt": "Pitch hard.", "input": {"turn_detection": {"vad_threshold": 0.3}}}
    assert with_prompt == [{"type": "session.update", "session": refused}]
    assert updates[-1]["session"] == {"input": {"keyterms": ["alpha"]}}
    assert (await emulator.session(agent.upstream_id))["config"]["input"]["keyterms"] == ["alpha"]
    assert len(await entries(cp, sid, status="rejected")) == 1

    # rollout status and the guard charge the refusal to persona only
    terms = (await rollout(cp, "terms"))["totals"]
    assert (terms["acknowledged"], terms["rejected"], terms["guard_failures"]) == (1, 0, 0)
    persona = (await rollout(cp, "persona"))["totals"]
    assert (persona["rejected"], persona["guard_failures"]) == (1, 1)
    # the session runs terms v1, not persona v1 (whose prompt it refused)
    assert await gauge(cp, "terms", 1) == 1
    assert await gauge(cp, "persona", 1) == 0
    assert (await cp.session(sid))["state"] == "rejected"  # the desired prompt is not running


async def test_a_failed_report_without_a_field_quarantines_every_pair_of_that_push(
    cp: ControlPlaneUnderTest, fleet: Fleet
) -> None:
    """A control-channel app's `failed` names no field: the push's (field, value) pairs are
    quarantined; a later policy's push still goes, without them."""
    app = await fleet.app("hold", labels={"team": "b"})
    match = {"labels": {"team": ["b"]}}
    await cp.publish({"id": "persona", "match": match, "set": {"system_prompt": "No."}})
    first = await app.next_push(5)
    assert first is not None and first.message["session"] == {"system_prompt": "No."}
    await app.client.failed(first.version, "the app's upstream refused it")
    await eventually(lambda: entries(cp, app.session_id, status="rejected"))

    await cp.publish({"id": "terms", "match": match, "set": {"keyterms": ["beta"]}})
    second = await app.next_push(5)
    assert second is not None
    assert second.message["session"] == {"input": {"keyterms": ["beta"]}}
    await app.client.applied(second.version)
    await eventually(lambda: entries(cp, app.session_id, status="acked", version=second.version))
    assert (await rollout(cp, "terms"))["totals"]["rejected"] == 0
    assert (await rollout(cp, "persona"))["totals"]["rejected"] == 1
    # the same value is never offered again, a new one is
    await cp.publish({"id": "persona", "match": match, "set": {"system_prompt": "Yes."}})
    third = await app.next_push(5)
    assert third is not None and third.message["session"] == {"system_prompt": "Yes."}
    assert await app.next_push(0.3) is None


async def test_a_version_that_changes_nothing_is_recorded_and_listed_by_config_at(
    cp: ControlPlaneUnderTest, emulator: Emulator, fleet: Fleet, capsys: Any
) -> None:
    agent = await fleet.agent("team=c")
    sid = cp.live_by_upstream(agent.upstream_id)
    match = {"labels": {"team": ["c"]}}
    await cp.publish({"id": "tone", "match": match, "set": {"system_prompt": "Be kind."}})
    await eventually(lambda: entries(cp, sid, status="acked", cause="policy"))
    pushed = len(await emulator.updates(agent.upstream_id, "session.update"))

    # an experiment whose control arm sets nothing, and a policy setting the value the
    # session already runs: neither sends anything, both are recorded
    await cp.publish({
        "id": "trial", "match": match,
        "experiment": {"key": "trial", "variants": [
            {"name": "control", "weight": 100, "set": {}},
            {"name": "pitch", "weight": 0, "set": {"system_prompt": "Sell."}},
        ]},
    })  # fmt: skip
    await cp.publish({"id": "same", "priority": 5, "match": match,
                      "set": {"system_prompt": "Be kind."}})  # fmt: skip
    unchanged = await eventually(lambda: entries(cp, sid, status="unchanged"))
    assert unchanged[0]["delta"] == {} and unchanged[0]["wire"] is None
    assert {"id": "trial", "version": 1, "variant": "control"} in [
        {k: p.get(k) for k in ("id", "version", "variant")} for p in unchanged[0]["policies"]
    ]
    last = (await eventually(lambda: entries(cp, sid, status="unchanged")))[-1]
    assert {p["id"] for p in last["policies"]} == {"tone", "trial", "same"}
    assert len(await emulator.updates(agent.upstream_id, "session.update")) == pushed
    rows = (await rollout(cp, "trial"))["totals"]
    assert (rows["targeted"], rows["unchanged"]) == (1, 1)
    assert await gauge(cp, "trial", 1) == 1

    await asyncio.sleep(0.01)
    answer = await cp.call("GET", f"/v1/sessions/{sid}/config-at?at={time.time()}", expect=200)
    assert answer["verified"] is True
    assert {p["id"] for p in answer["policies"]} == {"tone", "trial", "same"}
    assert answer["policies_by"]["seq"] == last["seq"]
    assert answer["config"]["system_prompt"] == "Be kind."
    assert answer["established_by"]["status"] == "acked"
    # the same through `controlplane audit at` against the server
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, ["audit", "at", sid, str(answer["at"]), "--url",
                                              cp.base, "--token", ADMIN])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    listed = next(line for line in out.splitlines() if line.startswith("policies: "))
    named = listed.removeprefix("policies: ").split(", ")
    assert {item.split(" (sha256 ")[0] for item in named} == {
        "tone@1", "trial@1/control", "same@1"
    }  # fmt: skip
    assert f"policies named by seq {last['seq']}" in out
    assert out.rstrip().endswith("VERIFIED")


async def test_a_refusal_naming_one_field_of_a_shared_push_charges_only_its_owner(
    cp: ControlPlaneUnderTest, emulator: Emulator, fleet: Fleet
) -> None:
    """Two policies' fields in one push (coalesced while an earlier push was in flight); the
    upstream refuses one field by name: only its policy is charged (rollout and guard), the
    other's field is pushed again at once and applied."""
    agent = await fleet.agent("team=d")
    sid = cp.live_by_upstream(agent.upstream_id)
    await emulator.faults(agent.upstream_id, {
        "latency_ms": 1500, "fail_fields": {"system_prompt": "invalid_value"},
    })  # fmt: skip
    match = {"labels": {"team": ["d"]}}
    await cp.publish({"id": "calm", "match": match, "set": {"vad_threshold": 0.4}})
    await eventually(lambda: live_push(cp, sid).in_flight is not None)
    # published while calm's push waits for its answer: one push carries both
    await cp.publish({"id": "persona", "priority": 20, "match": match,
                      "set": {"system_prompt": "Pitch hard."}})  # fmt: skip
    await cp.publish({"id": "terms", "match": match, "set": {"keyterms": ["gamma"]}})
    in_flight = live_push(cp, sid).in_flight
    assert in_flight is not None and set(in_flight.delta) == {"vad_threshold"}, "not coalesced"
    rejected = await eventually(lambda: entries(cp, sid, status="rejected"), timeout=10)
    assert rejected[0]["delta"] == {"system_prompt": "Pitch hard.", "keyterms": ["gamma"]}

    async def terms_applied() -> bool:
        config = (await emulator.session(agent.upstream_id))["config"]
        return bool(config["input"].get("keyterms") == ["gamma"])

    await eventually(terms_applied, timeout=10)
    await eventually(lambda: live_push(cp, sid).state != "pending")
    terms = (await rollout(cp, "terms"))["totals"]
    assert (terms["rejected"], terms["guard_failures"]) == (0, 0)
    assert terms["acknowledged"] == 1
    persona = (await rollout(cp, "persona"))["totals"]
    assert (persona["rejected"], persona["guard_failures"]) == (1, 1)
    calm = (await rollout(cp, "calm"))["totals"]
    assert (calm["rejected"], calm["guard_failures"]) == (0, 0)


def live_push(cp: ControlPlaneUnderTest, session_id: str) -> Any:
    return cp.service.engine.live[session_id].push


async def test_a_control_channel_app_names_the_refused_field(
    cp: ControlPlaneUnderTest, fleet: Fleet
) -> None:
    match = {"labels": {"team": ["e"]}}
    await cp.publish({"id": "persona", "priority": 20, "match": match,
                      "set": {"system_prompt": "Pitch hard."}})  # fmt: skip
    await cp.publish({"id": "terms", "match": match, "set": {"keyterms": ["delta"]}})
    app = await fleet.app("hold", labels={"team": "e"})
    first = await app.next_push(5)  # the connect push carries both policies' fields
    assert first is not None
    assert first.message["session"] == {"system_prompt": "Pitch hard.",
                                        "input": {"keyterms": ["delta"]}}  # fmt: skip
    await app.client.failed(first.version, "system_prompt refused", fields=["system_prompt"])
    rest = await app.next_push(5)  # the rest, at once, without the refused field
    assert rest is not None and rest.version == first.version + 1
    assert rest.message["session"] == {"input": {"keyterms": ["delta"]}}
    await app.client.applied(rest.version)
    await eventually(lambda: entries(cp, app.session_id, status="acked", version=rest.version))
    terms = (await rollout(cp, "terms"))["totals"]
    assert (terms["acknowledged"], terms["rejected"], terms["guard_failures"]) == (1, 0, 0)
    persona = (await rollout(cp, "persona"))["totals"]
    assert (persona["rejected"], persona["guard_failures"]) == (1, 1)


async def test_failed_fields_must_be_canonical_names(cp: ControlPlaneUnderTest) -> None:
    await cp.publish({"id": "terms", "match": {"labels": {"team": ["f"]}},
                      "set": {"keyterms": ["eps"]}})  # fmt: skip
    async with websockets.connect(
        cp.ws_base + "/v1/control", additional_headers={"Authorization": f"Bearer {ADMIN}"}
    ) as ws:
        await ws.send(json.dumps({"type": "register", "kind": "voice-agent-v1",
                                  "model": "voice-agent", "labels": {"team": "f"}}))  # fmt: skip
        frames = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(2)]
        push = next(f for f in frames if f["type"] == "push")
        for bad in (["nope"], "keyterms", [1]):
            await ws.send(json.dumps({"type": "failed", "version": push["version"],
                                      "error": "x", "fields": bad}))  # fmt: skip
            error = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert (error["type"], error["code"]) == ("error", "bad_fields"), error
        assert "keyterms" in error["message"] or "canonical" in error["message"]
        session_id = push["session_id"]
        assert cp.service.engine.live[session_id].push.in_flight is not None  # unchanged
        assert not await entries(cp, session_id, status="rejected")
