"""Change records (issue #18): who changed a policy, when, why, from what to what; identical
applies create nothing; `policy history` / `policy diff` show the records."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from controlplane import cli
from controlplane.app import SERVICE, build_app
from controlplane.config import Settings
from tests.integration.service.conftest import ADMIN, ControlPlaneUnderTest, _serve

TONE = {"id": "tone", "set": {"system_prompt": "first"}, "lock": ["system_prompt"]}


def _cli(cp: ControlPlaneUnderTest, *args: str) -> int:
    return cli.main([*args[:2], "--url", cp.base, "--token", ADMIN, *args[2:]])


async def _records(cp: ControlPlaneUnderTest, policy_id: str, query: str = "") -> Any:
    return await cp.call("GET", f"/v1/policies/{policy_id}/versions{query}", expect=200)


def _digest(document: dict[str, Any]) -> str:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def test_publish_rollback_and_retire_record_actor_time_reason_and_before_after(
    cp: ControlPlaneUnderTest,
) -> None:
    first = await cp.publish({**TONE, "reason": "initial disclosure"})
    assert first["unchanged"] is False and len(first["digest"]) == 64
    await cp.publish({**TONE, "set": {"system_prompt": "second"}})
    rolled = await cp.call("POST", "/v1/policies/tone/rollback",
                           body={"to": 1, "reason": "second was wrong"}, expect=200)  # fmt: skip
    assert rolled["rolled_back_to"] == 1 and rolled["version"] == 3
    await cp.call("DELETE", "/v1/policies/tone?reason=campaign%20over", expect=200)
    body = await _records(cp, "tone")
    assert body["next"] is None
    v1, v2, v3, v4 = body["items"]
    assert [r["action"] for r in body["items"]] == ["publish", "publish", "rollback", "retire"]
    assert [r["reason"] for r in body["items"]] == [
        "initial disclosure", None, "second was wrong", "campaign over",
    ]  # fmt: skip
    for record in body["items"]:
        assert record["actor"].startswith("admin:") and ADMIN not in json.dumps(record)
        assert record["at"].endswith("Z")
        assert record["digest"] == _digest(record["policy"])  # sha256 of the canonical doc
    assert v1["before"] is None and v1["after"] == v1["policy"]
    assert v2["before"] == v1["policy"] and v2["after"]["set"] == {"system_prompt": "second"}
    assert v3["before"] == v2["policy"] and v3["after"]["set"] == {"system_prompt": "first"}
    assert v4["before"] == v3["policy"] and v4["after"] is None
    # the same content under another version and reason: another digest, never a reused one
    assert len({r["digest"] for r in body["items"]}) == 4
    # a retirement is not the end of the records: republishing starts from "nothing"
    back = await cp.publish(TONE)
    assert back["version"] == 5
    assert (await _records(cp, "tone"))["items"][-1]["before"] is None


async def test_an_identical_apply_creates_no_version_and_names_the_current_one(
    cp: ControlPlaneUnderTest,
) -> None:
    await cp.publish({**TONE, "reason": "first"})
    for doc in (TONE, {**TONE, "reason": "again"}, {**TONE, "version": 1},
                {**TONE, "version": 9}):  # fmt: skip
        same = await cp.call("POST", "/v1/policies", body=doc, expect=200)
        assert same == {"id": "tone", "version": 1, "unchanged": True,
                        "digest": same["digest"], "warnings": []}, doc  # fmt: skip
    assert [r["version"] for r in (await _records(cp, "tone"))["items"]] == [1]
    changed = await cp.publish({**TONE, "priority": 5})
    assert changed["version"] == 2 and changed["unchanged"] is False
    # after a retirement the same document is a new version again
    await cp.call("DELETE", "/v1/policies/tone", expect=200)
    assert (await cp.publish({**TONE, "priority": 5}))["version"] == 4


async def test_versions_are_listed_a_page_at_a_time(cp: ControlPlaneUnderTest) -> None:
    for n in range(5):
        await cp.publish({"id": "paged", "set": {"prompt": f"p{n}"}})
    page = await _records(cp, "paged", "?limit=2")
    seen = [r["version"] for r in page["items"]]
    while page["next"] is not None:
        page = await _records(cp, "paged", f"?limit=2&cursor={page['next']}")
        seen += [r["version"] for r in page["items"]]
    assert seen == [1, 2, 3, 4, 5]
    bad = await cp.call("GET", "/v1/policies/paged/versions?cursor=abc", expect=400)
    assert "cursor" in bad["error"]["message"]


async def test_reasons_are_checked(cp: ControlPlaneUnderTest) -> None:
    await cp.publish(TONE)
    long = await cp.call("POST", "/v1/policies/tone/rollback",
                         body={"to": 1, "reason": "x" * 2001}, expect=400)  # fmt: skip
    assert "2000" in long["error"]["message"]
    typed = await cp.call("POST", "/v1/policies/tone/rollback", body={"to": 1, "reason": 5},
                          expect=400)  # fmt: skip
    assert '"reason" must be a string' in typed["error"]["message"]
    bad_doc = await cp.call("POST", "/v1/policies", body={**TONE, "reason": "y" * 2001},
                            expect=422)  # fmt: skip
    assert bad_doc["error"]["details"]["violations"][0]["field"] == "reason"
    assert [r["version"] for r in (await _records(cp, "tone"))["items"]] == [1]


@pytest.fixture
async def strict_cp(cp_settings: Callable[..., Settings]) -> AsyncIterator[ControlPlaneUnderTest]:
    settings = cp_settings(require_reason_for_locks=True)
    app = build_app(settings)
    runner, port = await _serve(app)
    async with aiohttp.ClientSession() as http:
        yield ControlPlaneUnderTest(port, http, app[SERVICE], settings.data_dir)
    await runner.cleanup()


async def test_a_deployment_can_require_a_reason_for_policies_with_lock(
    strict_cp: ControlPlaneUnderTest,
) -> None:
    cp = strict_cp
    refused = await cp.call("POST", "/v1/policies", body=TONE, expect=422)
    assert refused["error"]["code"] == "reason_required"
    assert refused["error"]["details"] == {"id": "tone", "action": "publish",
                                           "lock": ["system_prompt"]}  # fmt: skip
    await cp.call("GET", "/v1/policies/tone", expect=404)
    await cp.publish({**TONE, "reason": "legal asked"})
    await cp.publish({"id": "free", "set": {"prompt": "x"}})  # no lock: no reason needed
    await cp.publish({**TONE, "set": {"system_prompt": "2"}, "reason": "update"})
    for method, path, body in (("POST", "/v1/policies/tone/rollback", {"to": 1}),
                               ("DELETE", "/v1/policies/tone", None)):  # fmt: skip
        refused = await cp.call(method, path, body=body, expect=422)
        assert refused["error"]["code"] == "reason_required", path
    await cp.call("POST", "/v1/policies/tone/rollback", body={"to": 1, "reason": "r"},
                  expect=200)  # fmt: skip
    await cp.call("DELETE", "/v1/policies/tone?reason=done", expect=200)


async def test_cli_history_and_diff_show_the_records(
    cp: ControlPlaneUnderTest, capsys: Any
) -> None:
    await cp.publish({**TONE, "reason": "initial"})
    await cp.publish({**TONE, "set": {"system_prompt": "second"}, "priority": 3})
    assert await asyncio.to_thread(_cli, cp, "policy", "rollback", "tone", "--to", "1",
                                   "--reason", "revert") == 0  # fmt: skip
    assert await asyncio.to_thread(_cli, cp, "policy", "retire", "tone", "--reason",
                                   "done") == 0  # fmt: skip
    capsys.readouterr()
    assert await asyncio.to_thread(_cli, cp, "policy", "history", "tone") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["VERSION", "ACTION", "AT", "ACTOR", "REASON", "DIGEST"]
    records = (await _records(cp, "tone"))["items"]
    rows = [line.split() for line in lines[1:]]
    assert [(r[0], r[1], r[-2], r[-1]) for r in rows] == [
        (str(x["version"]), x["action"], x["reason"] or "-", x["digest"][:12]) for x in records
    ]
    assert await asyncio.to_thread(_cli, cp, "policy", "history", "tone", "--json") == 0
    assert json.loads(capsys.readouterr().out) == records

    assert await asyncio.to_thread(_cli, cp, "policy", "diff", "tone", "1", "2") == 0
    table = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert table == [
        ["FIELD", "VERSION", "1", "VERSION", "2"],
        ["priority", "0", "3"],
        ["reason", "initial", "-"],
        ["set.system_prompt", "first", "second"],
    ]
    assert await asyncio.to_thread(_cli, cp, "policy", "diff", "tone", "1", "3", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {
        "id": "tone", "from": 1, "to": 3,
        "changes": [{"path": "reason", "from": "initial", "to": "revert"}],
    }  # fmt: skip
    assert await asyncio.to_thread(_cli, cp, "policy", "diff", "tone", "1", "9") == 1
    assert "no version 9 (versions: 1, 2, 3, 4)" in capsys.readouterr().err
    # an identical apply says so
    doc = cp.data_dir.parent / "tone.json"
    doc.write_text(json.dumps({"id": "again", "set": {"prompt": "x"}}))
    assert await asyncio.to_thread(_cli, cp, "policy", "apply", "-f", str(doc)) == 0
    assert await asyncio.to_thread(_cli, cp, "policy", "apply", "-f", str(doc)) == 0
    assert "policy again unchanged: identical to the current version 1" in (capsys.readouterr().out)
