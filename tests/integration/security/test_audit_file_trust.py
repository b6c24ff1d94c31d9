"""``audit verify --file`` (an ``audit export``) checks consistency, not origin: an export
holds no signed checkpoint, so an edited call whose chain was recomputed verifies. The CLI says
so on every answer, and refuses ``--public-key`` with ``--file`` (a pin would authenticate
nothing, and "ok" under a pinned key would read as proof). Real service, real CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from controlplane import cli
from controlplane.cli.audit import FILE_ORIGIN
from controlplane.edges.client import ControlClient
from sessions.versionchain import GENESIS, canonical_json
from tests.integration.service.conftest import ADMIN, ControlPlaneUnderTest, eventually


def rechain(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a forger does after an edit: every prev_hash and hash recomputed."""
    prev, out = GENESIS, []
    for row in rows:
        body = {k: v for k, v in row.items() if k != "hash"} | {"prev_hash": prev}
        prev = hashlib.sha256(prev.encode() + canonical_json(body)).hexdigest()
        out.append({**body, "hash": prev})
    return out


async def test_a_recomputed_forgery_is_not_passed_off_as_proven(
    cp: ControlPlaneUnderTest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with ControlClient(cp.ws_base + "/v1/control", token=ADMIN, kind="voice-agent-v1",
                             model="voice-agent", labels={"tenant": "acme"}) as app:  # fmt: skip
        sid = app.session_id
        assert sid is not None
        await cp.publish({"id": "p", "set": {"system_prompt": "the real prompt"}})
        push = await anext(app.pushes())
        await app.applied(push.version)
        entries = await eventually(lambda: _acked(cp, sid))
    export = tmp_path / "call.jsonl"
    export.write_text("".join(json.dumps(e) + "\n" for e in entries))
    forged = tmp_path / "forged.jsonl"
    edited = json.loads(json.dumps(entries).replace("the real prompt", "a forged prompt"))
    forged.write_text("".join(json.dumps(e) + "\n" for e in rechain(edited)))

    capsys.readouterr()
    assert cli.main(["audit", "verify", "--file", str(forged)]) == 0  # consistent...
    out = capsys.readouterr().out
    assert f"ok      {sid}" in out and f"origin: {FILE_ORIGIN}" in out  # ...but not proven
    assert cli.main(["audit", "verify", "--file", str(export), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["origin"] == FILE_ORIGIN

    [key] = sorted((cp.data_dir / "audit").glob("signing-key-*.pub"))
    for path in (forged, export):
        args = ["audit", "verify", "--file", str(path), "--public-key", str(key)]
        assert cli.main(args) == 2
        err = capsys.readouterr().err
        assert "--public-key with --file" in err and "no key proves its origin" in err


async def _acked(cp: ControlPlaneUnderTest, sid: str) -> list[dict[str, Any]] | None:
    entries = await cp.log(sid)
    return entries if any(e.get("status") == "acked" for e in entries) else None
