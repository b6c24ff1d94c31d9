"""Issue 19 item 6: ``audit verify --data-dir`` on a real control plane's data directory fails
when its checkpoints were deleted while the directory shows they were being written (the
node's key, the published public key); ``--allow-missing-checkpoints`` accepts it."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import websockets

from controlplane import cli
from tests.integration.audit.conftest import Stack
from tests.integration.service.conftest import ADMIN


def _verify(root: Path, capsys: Any, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(["audit", "verify", "--data-dir", str(root), *extra])
    return code, capsys.readouterr().out


async def test_deleted_checkpoints_fail_verify_unless_explicitly_allowed(
    stack: Stack, tmp_path: Path, capsys: Any
) -> None:
    cp = await stack.start()
    async with websockets.connect(
        cp.ws_base + "/v1/control", additional_headers={"Authorization": f"Bearer {ADMIN}"}
    ) as ws:
        await ws.send(json.dumps({"type": "register", "kind": "voice-agent-v1",
                                  "model": "voice-agent"}))  # fmt: skip
        sid = json.loads(await asyncio.wait_for(ws.recv(), 5))["session_id"]
        for n in range(3):
            await ws.send(json.dumps({"type": "update", "config": {"vad_threshold": n / 10}}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "update_result"
    await stack.stop(cp)  # closing the log writes the last checkpoint
    data = cp.data_dir
    assert list((data / "audit").glob("checkpoints-*.jsonl"))
    code, out = await asyncio.to_thread(_verify, data, capsys)
    assert code == 0, out

    tampered = tmp_path / "tampered"
    shutil.copytree(data, tampered)
    for path in (tampered / "audit").glob("checkpoints-*.jsonl"):
        path.unlink()
    code, out = await asyncio.to_thread(_verify, tampered, capsys)
    assert code == 1, out
    assert "BAD CHECKPOINT  missing: no checkpoint records, but the node's signing key" in out
    assert "signing-key-" in out and "--allow-missing-checkpoints" in out
    code, out = await asyncio.to_thread(_verify, tampered, capsys, sid, "--json")
    answer = json.loads(out)
    assert code == 1 and answer["ok"] is False
    assert answer["checkpoints"]["problems"][0]["kind"] == "missing"
    assert answer["items"][0]["ok"] is True  # the chain itself is intact: only proof is gone
    code, out = await asyncio.to_thread(_verify, tampered, capsys, "--allow-missing-checkpoints")
    assert code == 0, out
    assert "no checkpoints: deletion of a session's newest entries is not detectable" in out

    # the key alone is evidence enough (the published .pub deleted as well)
    for path in (tampered / "audit").glob("signing-key-*.pub"):
        path.unlink()
    code, out = await asyncio.to_thread(_verify, tampered, capsys)
    assert code == 1 and "missing: no checkpoint records" in out, out
