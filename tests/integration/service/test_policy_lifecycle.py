"""Issue 4: preview, rollback, relabel, rollout status on the real service."""

from __future__ import annotations

import asyncio
from typing import Any

from controlplane.edges.client import ControlClient
from tests.integration.service.conftest import ADMIN, ControlPlaneUnderTest, eventually


def _client(cp: ControlPlaneUnderTest, **kw: Any) -> ControlClient:
    return ControlClient(cp.ws_base + "/v1/control", token=ADMIN, kind="voice-agent-v1",
                         model="voice-agent", **kw)  # fmt: skip


async def test_preview_counts_sessions_that_would_change_without_publishing(
    cp: ControlPlaneUnderTest,
) -> None:
    async with _client(cp, labels={"region": "eu"}), _client(cp, labels={"region": "us"}):
        doc = {"id": "eu-only", "match": {"labels": {"region": "eu"}},
               "set": {"system_prompt": "EU rules."}}  # fmt: skip
        preview = await cp.call("POST", "/v1/policies/preview", body=doc, expect=200)
        assert preview["targeted"] == 1 and preview["changed"] == 1
        assert preview["by_kind"] == {"voice-agent-v1": {"targeted": 1, "changed": 1}}
        assert preview["samples"][0]["wire"] == {
            "type": "session.update",
            "session": {"system_prompt": "EU rules."},
        }
        assert cp.service.store.records() == []  # a preview publishes nothing


async def test_rollback_republishes_an_old_version_as_the_next_one(
    cp: ControlPlaneUnderTest,
) -> None:
    async with _client(cp) as app:
        pushes = app.pushes()
        doc = {"id": "tone", "set": {"system_prompt": "first"}}
        await cp.publish(doc)
        await app.applied((await asyncio.wait_for(anext(pushes), 5)).version)
        await cp.publish({**doc, "set": {"system_prompt": "second"}})
        await app.applied((await asyncio.wait_for(anext(pushes), 5)).version)
        result = await cp.call("POST", "/v1/policies/tone/rollback", body={"to": 1}, expect=200)
        assert result["version"] == 3 and result["rolled_back_to"] == 1
        push = await asyncio.wait_for(anext(pushes), 5)
        assert push.message == {"type": "session.update", "session": {"system_prompt": "first"}}
        await app.applied(push.version)
        assert app.session_id is not None
        entries = await cp.log(app.session_id)
        assert entries[-1]["cause"] == "rollback" and entries[-1]["status"] == "acked"
        versions = await cp.call("GET", "/v1/policies/tone/versions", expect=200)
        assert [v["version"] for v in versions["items"]] == [1, 2, 3]
        digest = versions["items"][2]["digest"]
        assert entries[-1]["policies"] == [
            {"id": "tone", "version": 3, "variant": None, "digest": digest}
        ]


async def test_relabel_re_resolves_and_pushes_the_delta(cp: ControlPlaneUnderTest) -> None:
    await cp.publish({"id": "vip", "match": {"labels": {"tier": "vip"}},
                      "set": {"keyterms": ["Platinum"]}})  # fmt: skip
    async with _client(cp, labels={"tier": "basic"}) as app:
        assert app.effective_config == {}
        sid = app.session_id
        assert sid is not None
        answer = await cp.call("PATCH", f"/v1/sessions/{sid}/labels",
                               body={"labels": {"tier": "vip"}}, expect=200)  # fmt: skip
        assert answer["labels"] == {"tier": "vip"}
        push = await asyncio.wait_for(anext(app.pushes()), 5)
        assert push.message == {"type": "session.update",
                                "session": {"input": {"keyterms": ["Platinum"]}}}  # fmt: skip
        await app.applied(push.version)

        async def relabel_entry() -> list[dict[str, Any]]:
            return [e for e in await cp.log(sid) if e["cause"] == "relabel"]

        entries = await eventually(relabel_entry)
        assert entries[0]["delta"] == {"keyterms": ["Platinum"]}
        status = await cp.call("GET", "/v1/policies/vip/rollout", expect=200)
        assert status["totals"]["targeted"] == 1
        # removing the label hands the field back (unset)
        await cp.call("PATCH", f"/v1/sessions/{sid}/labels", body={"labels": {"tier": None}},
                      expect=200)  # fmt: skip
        push = await asyncio.wait_for(anext(app.pushes()), 5)
        assert push.message == {"type": "session.update", "session": {"input": {"keyterms": []}}}


async def test_rolling_back_to_a_retirement_is_a_conflict_and_changes_nothing(
    cp: ControlPlaneUnderTest,
) -> None:
    # A schema-valid request that the policy's state refuses: 409 (as retiring twice), not
    # 400 (the OpenAPI fuzz's positive-data check found the 400: the body is well formed).
    await cp.publish({"id": "tone", "set": {"system_prompt": "first"}})
    await cp.call("DELETE", "/v1/policies/tone?reason=over", expect=200)
    err = await cp.call("POST", "/v1/policies/tone/rollback", body={"to": 2}, expect=409)
    assert err["error"]["code"] == "not_a_published_version"
    assert "version 2 of 'tone' is a retirement" in err["error"]["message"]
    versions = await cp.call("GET", "/v1/policies/tone/versions", expect=200)
    assert [v["version"] for v in versions["items"]] == [1, 2]
