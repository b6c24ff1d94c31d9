"""Issue 4 acceptance on the real service: auth, bad input, audit verify."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from controlplane import cli
from controlplane.edges.client import ControlClient
from tests.integration.service.conftest import ADMIN, ControlPlaneUnderTest

MUTATING = [
    ("POST", "/v1/policies", {"id": "x", "set": {"prompt": "p"}}),
    ("POST", "/v1/policies/x/rollback", {"to": 1}),
    ("DELETE", "/v1/policies/x", None),
    ("PATCH", "/v1/sessions/s/labels", {"labels": {"a": "b"}}),
]


async def test_every_mutating_endpoint_refuses_missing_wrong_and_low_tokens(
    cp: ControlPlaneUnderTest,
) -> None:
    for method, path, body in MUTATING:
        missing = await cp.call(method, path, token=None, body=body, expect=401)
        assert missing["error"]["code"] == "unauthorized"
        wrong = await cp.call(method, path, token="not-a-token", body=body, expect=401)
        assert wrong["error"]["code"] == "unauthorized"
        low = await cp.call(method, path, token="tok-viewer", body=body, expect=403)
        assert low["error"]["code"] == "forbidden"
    # experimenters may publish only experiments without locks
    denied = await cp.call("POST", "/v1/policies", token="tok-experimenter",
                           body={"id": "x", "set": {"prompt": "p"}}, expect=403)  # fmt: skip
    assert "experiment" in denied["error"]["message"]
    assert cp.service.store.records() == []  # nothing was written


async def test_bad_input_gets_4xx_with_a_stable_code_and_changes_nothing(
    cp: ControlPlaneUnderTest,
) -> None:
    cases: list[tuple[str, str, Any, int, str]] = [
        ("POST", "/v1/policies", {"id": "Bad Id", "set": {}}, 422, "invalid_policy"),
        ("POST", "/v1/policies", {"id": "ok", "set": {"prompt": "x" * 1751}}, 422,
         "invalid_policy"),
        ("POST", "/v1/policies", {"id": "ok", "bogus": 1}, 422, "invalid_policy"),
        ("POST", "/v1/policies", [1, 2], 422, "invalid_policy"),
        ("GET", "/v1/sessions/nope", None, 404, "session_not_found"),
        ("GET", "/v1/policies/nope", None, 404, "policy_not_found"),
        ("GET", "/v1/sessions?limit=0", None, 400, "bad_request"),
    ]  # fmt: skip
    for method, path, body, status, code in cases:
        answer = await cp.call(method, path, body=body, expect=status)
        assert answer["error"]["code"] == code, (path, answer)
    limit = await cp.call("POST", "/v1/policies",
                          body={"id": "ok", "set": {"prompt": "x" * 1751}}, expect=422)  # fmt: skip
    violation = limit["error"]["details"]["violations"][0]
    assert violation["field"] == "set.prompt" and violation["limit"] == 1750
    async with cp.http.post(cp.base + "/v1/policies", data=b"{not json",
                            headers={"Authorization": f"Bearer {ADMIN}",
                                     "Content-Type": "application/json"}) as r:  # fmt: skip
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "bad_json"
    await cp.publish({"id": "ok", "version": 3, "set": {"prompt": "a"}})
    again = {"id": "ok", "version": 3, "set": {"prompt": "b"}}
    dup = await cp.call("POST", "/v1/policies", body=again, expect=409)
    assert dup["error"]["code"] == "version_conflict"
    older = await cp.call("POST", "/v1/policies", body={**again, "version": 2}, expect=409)
    assert "not above the current version 3" in older["error"]["message"]
    assert [r.version for r in cp.service.store.history("ok")] == [3]


async def test_audit_verify_passes_after_a_run_and_fails_after_an_edited_line(
    cp: ControlPlaneUnderTest, capsys: Any
) -> None:
    async with ControlClient(cp.ws_base + "/v1/control", token=ADMIN, kind="voice-agent-v1",
                             model="voice-agent") as app:  # fmt: skip
        pushes = app.pushes()
        await cp.publish({"id": "a", "set": {"system_prompt": "one"}})
        push = await asyncio.wait_for(anext(pushes), 5)
        await app.applied(push.version)
        await cp.publish({"id": "a", "set": {"system_prompt": "two"}})
        push = await asyncio.wait_for(anext(pushes), 5)
        await app.applied(push.version)
        sid = app.session_id
    assert sid is not None
    assert len(await cp.log(sid)) >= 4
    await cp.service.versionlog.flush()

    data_dir = str(cp.data_dir)
    code = await asyncio.to_thread(cli.main, ["audit", "verify", "--data-dir", data_dir, sid])
    assert code == 0
    server = await asyncio.to_thread(
        cli.main, ["audit", "verify", "--url", cp.base, "--token", ADMIN, sid]
    )
    assert server == 0

    files = sorted(Path(data_dir, "audit").rglob("*.jsonl"))
    assert files, "the file backend wrote no JSONL"
    edited = False
    for path in files:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            entry = json.loads(line)
            if entry.get("session_id") == sid and entry.get("status") == "acked":
                entry["status"] = "rejected"
                lines[i] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
                path.write_text("\n".join(lines) + "\n")
                edited = True
                break
        if edited:
            break
    assert edited
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, ["audit", "verify", "--data-dir", data_dir, sid])
    assert code == 1
    out = capsys.readouterr()
    assert sid in out.out + out.err
