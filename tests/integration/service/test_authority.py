"""Issue #18 escalations, on the real service: locks are a ceiling, policy ids are owned by
role, and the control channel needs a role that may register sessions."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from controlplane.edges.client import ControlClient
from controlplane.errors import Forbidden
from controlplane.roles import Role
from policies.model import parse_policy
from tests.integration.service.conftest import ControlPlaneUnderTest, eventually

COMPLIANCE, EXPERIMENTER = "tok-compliance", "tok-experimenter"
PROMPT = "This call is recorded for compliance."
DISCLOSURE = {
    "id": "eu-disclosure", "priority": 100, "match": {"labels": {"region": "eu-west-1"}},
    "set": {"prompt": PROMPT}, "lock": ["prompt"],
}  # fmt: skip
PITCH = {
    "id": "upsell", "priority": 1_000_000,
    "experiment": {"key": "upsell-q4", "variants": [
        {"name": "pitch", "weight": 100, "set": {"prompt": "Ask about our premium plan."}}]},
}  # fmt: skip

LOCK_FREE = {"id": "tone", "experiment": {"key": "tone", "variants": [
    {"name": "a", "weight": 100, "set": {"prompt": "Hi."}}]}}  # fmt: skip


def _app(cp: ControlPlaneUnderTest, token: str = "tok-app", **labels: str) -> ControlClient:
    return ControlClient(cp.ws_base + "/v1/control", token=token, kind="voice-agent-v1",
                         model="voice-agent", labels=labels)  # fmt: skip


async def _prompt(cp: ControlPlaneUnderTest, sid: str) -> Any:
    return (await cp.session(sid))["effective_config"].get("prompt")


async def test_an_experiment_at_top_priority_cannot_replace_a_compliance_locked_prompt(
    cp: ControlPlaneUnderTest,
) -> None:
    await cp.publish(DISCLOSURE, token=COMPLIANCE)
    async with _app(cp, region="eu-west-1") as app:
        assert app.session_id is not None
        assert await _prompt(cp, app.session_id) == PROMPT
        for path in ("/v1/policies/preview", "/v1/policies"):
            body = await cp.call("POST", path, body=PITCH, token=EXPERIMENTER, expect=409)
            error = body["error"]
            assert error["code"] == "field_locked"
            assert error["details"] | {"conflicts": None} == {
                "field": "prompt", "policy": "eu-disclosure", "version": 1,
                "owner_role": "compliance", "role": "experimenter", "conflicts": None,
            }  # fmt: skip
            assert (
                "'prompt'" in error["message"] and "'eu-disclosure' version 1" in error["message"]
            )
        await cp.call("GET", "/v1/policies/upsell", expect=404)  # nothing was published
        await asyncio.sleep(0.1)
        assert await _prompt(cp, app.session_id) == PROMPT
        # outside the lock's sessions the same experiment is fine
        us = {**PITCH, "match": {"labels": {"region": "us-east-1"}}}
        assert (await cp.publish(us, token=EXPERIMENTER))["warnings"] == []


async def test_a_lock_whose_overlap_depends_on_labels_warns_and_wins_at_resolve_time(
    cp: ControlPlaneUnderTest,
) -> None:
    await cp.publish(DISCLOSURE, token=COMPLIANCE)
    async with _app(cp, region="eu-west-1", tenant="acme") as both, _app(cp, tenant="acme") as us:
        assert both.session_id is not None and us.session_id is not None
        acme = {**PITCH, "match": {"labels": {"tenant": "acme"}}}
        preview = await cp.call("POST", "/v1/policies/preview", body=acme, token=EXPERIMENTER,
                                expect=200)  # fmt: skip
        assert preview["targeted"] == 2 and preview["changed"] == 1  # only the non-EU one
        published = await cp.publish(acme, token=EXPERIMENTER)
        for answer in (preview, published):
            (warning,) = answer["warnings"]
            assert (warning["code"], warning["field"], warning["policy"], warning["version"]) == (
                "locked_field",
                "prompt",
                "eu-disclosure",
                1,
            )
        assert await _prompt(cp, both.session_id) == PROMPT
        assert await _prompt(cp, us.session_id) == "Ask about our premium plan."


async def test_an_experimenter_cannot_republish_a_compliance_policy_id_without_its_lock(
    cp: ControlPlaneUnderTest,
) -> None:
    await cp.publish(DISCLOSURE, token=COMPLIANCE)
    hijack = {"id": "eu-disclosure", "set": {"prompt": "anything"}, "experiment": {
        "key": "dummy", "variants": [{"name": "only", "weight": 100, "set": {}}]}}  # fmt: skip
    for method, path, body in (
        ("POST", "/v1/policies", hijack),
        ("POST", "/v1/policies/preview", hijack),
        ("POST", "/v1/policies/eu-disclosure/rollback", {"to": 1}),
        ("DELETE", "/v1/policies/eu-disclosure", None),
    ):
        answer = await cp.call(method, path, body=body, token=EXPERIMENTER, expect=403)
        assert answer["error"]["code"] == "policy_owned", (method, path)
        assert answer["error"]["details"] == {"id": "eu-disclosure", "owner_role": "compliance",
                                              "role": "experimenter",
                                              "required_role": "compliance"}  # fmt: skip
    policy = await cp.call("GET", "/v1/policies/eu-disclosure", expect=200)
    assert policy["version"] == 1 and policy["policy"]["lock"] == ["prompt"]
    assert policy["owner_role"] == "compliance"
    async with _app(cp, region="eu-west-1") as app:
        await app.update({"prompt": "client change"})
        assert await _prompt(cp, str(app.session_id)) == PROMPT


async def test_ownership_rises_with_a_higher_role_and_experimenters_manage_their_own(
    cp: ControlPlaneUnderTest,
) -> None:
    await cp.publish(PITCH, token=EXPERIMENTER)
    await cp.publish({**PITCH, "priority": 5}, token=EXPERIMENTER)
    rolled = await cp.call("POST", "/v1/policies/upsell/rollback", body={"to": 1},
                           token=EXPERIMENTER, expect=200)  # fmt: skip
    assert rolled["version"] == 3
    await cp.call("DELETE", "/v1/policies/upsell", token=EXPERIMENTER, expect=200)
    # compliance takes the id over; the experimenter may no longer touch it
    await cp.publish({**PITCH, "priority": 7}, token=COMPLIANCE)
    versions = (await cp.call("GET", "/v1/policies/upsell/versions", expect=200))["items"]
    assert [(v["role"], v["owner_role"]) for v in versions] == [
        ("experimenter", "experimenter")
    ] * 4 + [("compliance", "compliance")]
    body = await cp.call("POST", "/v1/policies", body=PITCH, token=EXPERIMENTER, expect=403)
    assert body["error"]["code"] == "policy_owned"


async def test_a_viewer_token_cannot_register_report_or_halt_a_compliance_version(
    cp: ControlPlaneUnderTest,
) -> None:
    guarded = {**DISCLOSURE, "guard": {"enabled": True, "min_sessions": 1,
                                       "max_failure_ratio": 0.0}}  # fmt: skip
    await cp.publish(guarded, token=COMPLIANCE)
    register = {"type": "register", "kind": "voice-agent-v1", "model": "voice-agent",
                "labels": {"region": "eu-west-1"}}  # fmt: skip
    for url, headers in (
        (cp.ws_base + "/v1/control", {"Authorization": "Bearer tok-viewer"}),
        (cp.ws_base + "/v1/control?token=tok-viewer", {}),
    ):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            async with cp.http.ws_connect(url, headers=headers) as ws:
                await ws.send_str(json.dumps(register))
        assert refused.value.status == 403
    assert cp.service.engine.live == {}
    rollout = await cp.call("GET", "/v1/policies/eu-disclosure/rollout", expect=200)
    assert rollout["state"] == "active"
    # the same steps with an app token: it registers, and its failed report (guard input,
    # kept) halts the version; so the viewer was stopped by its role, nothing else
    async with _app(cp, region="eu-west-1") as app:
        await cp.publish({**guarded, "set": {"prompt": PROMPT + " v2"}}, token=COMPLIANCE)
        push = await asyncio.wait_for(anext(app.pushes()), 5)
        await app.failed(push.version, "upstream refused")

        async def halted() -> bool:
            body = await cp.call("GET", "/v1/policies/eu-disclosure/rollout", expect=200)
            return bool(body["state"] == "halted")

        await eventually(halted)


async def test_a_report_naming_another_session_is_refused_and_changes_nothing(
    cp: ControlPlaneUnderTest,
) -> None:
    guarded = {**DISCLOSURE, "guard": {"enabled": True, "min_sessions": 1,
                                       "max_failure_ratio": 0.0}}  # fmt: skip
    await cp.publish(guarded, token=COMPLIANCE)
    async with (
        _app(cp, region="eu-west-1") as victim,
        cp.http.ws_connect(
            cp.ws_base + "/v1/control", headers={"Authorization": "Bearer tok-app"}
        ) as other,
    ):
        await other.send_str(json.dumps({"type": "register", "kind": "voice-agent-v1",
                                         "model": "voice-agent"}))  # fmt: skip
        assert (await other.receive_json(timeout=5))["type"] == "registered"
        await cp.publish({**guarded, "set": {"prompt": "v2"}}, token=COMPLIANCE)
        push = await asyncio.wait_for(anext(victim.pushes()), 5)
        forged = {"type": "failed", "version": push.version, "session_id": victim.session_id}
        await other.send_str(json.dumps(forged))
        reply = await other.receive_json(timeout=5)
        assert (reply["type"], reply["code"]) == ("error", "not_your_session")
        log = await cp.log(str(victim.session_id))
        assert not [e for e in log if e["status"] == "rejected"]
        rollout = await cp.call("GET", "/v1/policies/eu-disclosure/rollout", expect=200)
        assert rollout["state"] == "active"


async def test_the_guard_rolls_back_as_the_owner_so_the_experimenter_keeps_its_policy(
    cp: ControlPlaneUnderTest,
) -> None:
    guard = {"enabled": True, "min_sessions": 1, "max_failure_ratio": 0.0,
             "on_breach": "rollback"}  # fmt: skip
    doc = {**PITCH, "match": {"labels": {"tier": "gold"}}, "guard": guard}
    await cp.publish(doc, token=EXPERIMENTER)
    async with _app(cp, tier="gold") as app:
        first = await asyncio.wait_for(anext(app.pushes()), 5)
        await app.applied(first.version)
        v2 = {"name": "pitch", "weight": 100, "set": {"prompt": "v2"}}
        await cp.publish({**doc, "experiment": {**doc["experiment"], "variants": [v2]}},
                         token=EXPERIMENTER)  # fmt: skip
        push = await asyncio.wait_for(anext(app.pushes()), 5)
        await app.failed(push.version, "upstream refused")

        async def rolled_back() -> list[Any]:
            body = await cp.call("GET", "/v1/policies/upsell/versions", expect=200)
            items = list(body["items"])
            return items if len(items) == 3 else []

        versions = await eventually(rolled_back)
        assert versions[-1]["cause"] == "rollback"
        assert versions[-1]["actor"] == "guard:node-a"
        assert (versions[-1]["role"], versions[-1]["owner_role"]) == ("experimenter",) * 2
    await cp.call("DELETE", "/v1/policies/upsell", token=EXPERIMENTER, expect=200)


async def test_a_publish_whose_owner_check_raced_a_takeover_answers_403_not_201(
    cp: ControlPlaneUnderTest,
) -> None:
    """Another replica's compliance publish can land between this replica's owner check and
    its event: every store refuses the event, and the publisher says so at once."""
    await cp.publish(LOCK_FREE, token=EXPERIMENTER)
    await cp.publish({**LOCK_FREE, "lock": ["prompt"]}, token=COMPLIANCE)  # the takeover
    late = parse_policy({**LOCK_FREE, "version": 3})
    started = asyncio.get_running_loop().time()
    with pytest.raises(Forbidden) as refused:  # the event as the raced replica sent it
        await cp.service.publisher.publish(late, "policy.published", "experimenter:abc",
                                           "policy", Role.EXPERIMENTER)  # fmt: skip
    assert refused.value.code == "policy_owned"
    assert asyncio.get_running_loop().time() - started < 1.0  # not the 2 s apply wait
    policy = await cp.call("GET", "/v1/policies/tone", expect=200)
    assert (policy["version"], policy["owner_role"]) == (2, "compliance")


async def test_a_lock_published_after_a_running_experiment_takes_the_field_on_live_sessions(
    cp: ControlPlaneUnderTest,
) -> None:
    async with _app(cp, region="eu-west-1") as app:
        assert app.session_id is not None
        pushes = app.pushes()
        await cp.publish(PITCH, token=EXPERIMENTER)
        first = await asyncio.wait_for(anext(pushes), 5)
        await app.applied(first.version)
        assert await _prompt(cp, app.session_id) == "Ask about our premium plan."
        await cp.publish(DISCLOSURE, token=COMPLIANCE)  # priority 100 < the experiment's 10^6
        push = await asyncio.wait_for(anext(pushes), 5)
        assert push.message["session"]["input"]["transcription_prompt"] == PROMPT
        await app.applied(push.version)
        session = await cp.session(app.session_id)
        assert session["effective_config"]["prompt"] == PROMPT
        assert session["provenance"]["prompt"]["id"] == "eu-disclosure"
