"""Issue 19 item 6: ``audit verify --data-dir`` on a real control plane's data directory fails
when its checkpoints were deleted while the directory shows they were being written (the
node's key, the published public key); ``--allow-missing-checkpoints`` accepts it."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import websockets

from controlplane import cli
from controlplane.app import build_app
from controlplane.config import Settings
from tests.integration.service.conftest import ADMIN, _serve

HOUR = 3600.0


class HourAgoClock:
    """Wall time one hour back (entries stamped as if written an hour ago); real monotonic."""

    def now(self) -> float:
        return time.time() - HOUR

    def monotonic(self) -> float:
        return time.monotonic()


class ShiftedClock:
    """Real time, shifted by ``shift`` seconds: the test moves it ahead. Both clocks move
    (time passing); a wall clock that steps alone is no alarm (test_clock_jumps)."""

    def __init__(self) -> None:
        self.shift = 0.0

    def now(self) -> float:
        return time.time() + self.shift

    def monotonic(self) -> float:
        return time.monotonic() + self.shift


def _verify(root: Path, capsys: Any, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(["audit", "verify", "--data-dir", str(root), *extra])
    return code, capsys.readouterr().out


async def _run_a_session(settings: Settings) -> str:
    """A real control plane writes a session (register + 3 updates), then stops (its log's
    close writes the last checkpoint); the session id."""
    app = build_app(settings, clock=HourAgoClock())
    runner, port = await _serve(app)
    try:
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/v1/control",
            additional_headers={"Authorization": f"Bearer {ADMIN}"},
        ) as ws:
            await ws.send(json.dumps({"type": "register", "kind": "voice-agent-v1",
                                      "model": "voice-agent"}))  # fmt: skip
            sid = str(json.loads(await asyncio.wait_for(ws.recv(), 5))["session_id"])
            for n in range(3):
                await ws.send(json.dumps({"type": "update", "config": {"vad_threshold": n / 10}}))
                assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "update_result"
    finally:
        await runner.cleanup()
    return sid


async def test_deleted_checkpoints_fail_verify_unless_explicitly_allowed(
    cp_settings: Callable[..., Settings], tmp_path: Path, capsys: Any
) -> None:
    settings = cp_settings()
    sid = await _run_a_session(settings)
    data = settings.data_dir
    assert list((data / "audit").glob("checkpoints-*.jsonl"))
    code, out = await asyncio.to_thread(_verify, data, capsys)
    assert code == 0, out

    tampered = tmp_path / "tampered"
    shutil.copytree(data, tampered)
    for path in (tampered / "audit").glob("checkpoints-*.jsonl"):
        path.unlink()
    code, out = await asyncio.to_thread(_verify, tampered, capsys)
    assert code == 1, out
    assert (f"BAD CHECKPOINT  missing: no checkpoint records, but 4 entries older than 60s are "
            f"covered by no checkpoint (oldest: session {sid} seq 1), while the node's signing "
            "key") in out  # fmt: skip
    assert "signing-key-" in out and "--allow-missing-checkpoints" in out
    code, out = await asyncio.to_thread(_verify, tampered, capsys, sid, "--json")
    answer = json.loads(out)
    assert code == 1 and answer["ok"] is False
    assert answer["checkpoints"]["problems"][0]["kind"] == "missing"
    assert answer["items"][0]["ok"] is True  # the chain itself is intact: only proof is gone
    code, out = await asyncio.to_thread(_verify, tampered, capsys, "--allow-missing-checkpoints")
    assert code == 0, out
    assert "no checkpoints: deletion of a session's newest entries is not detectable" in out
    # entries younger than the grace may await their checkpoint (a writer still running)
    code, out = await asyncio.to_thread(
        _verify, tampered, capsys, "--checkpoint-grace-s", str(2 * HOUR)
    )
    assert code == 0, out

    # the key alone is evidence enough (the published .pub deleted as well)
    for path in (tampered / "audit").glob("signing-key-*.pub"):
        path.unlink()
    code, out = await asyncio.to_thread(_verify, tampered, capsys)
    assert code == 1 and "missing: no checkpoint records" in out, out


async def test_a_running_server_reports_its_deleted_checkpoints(
    cp_settings: Callable[..., Settings],
) -> None:
    """GET /v1/audit/verify on the replica whose checkpoint files were deleted under it."""
    settings = cp_settings(audit_checkpoint_interval_s=0.2)
    clock = ShiftedClock()
    app = build_app(settings, clock=clock)
    runner, port = await _serve(app)
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {ADMIN}"}
    try:
        async with (
            websockets.connect(
                f"ws://127.0.0.1:{port}/v1/control", additional_headers=headers
            ) as ws,  # fmt: skip
            aiohttp.ClientSession(headers=headers) as http,
        ):
            await ws.send(json.dumps({"type": "register", "kind": "voice-agent-v1",
                                      "model": "voice-agent"}))  # fmt: skip
            await asyncio.wait_for(ws.recv(), 5)
            files = settings.data_dir / "audit"
            for _ in range(100):  # the writer's checkpoint, every 0.2 s
                if list(files.glob("checkpoints-*.jsonl")):
                    break
                await asyncio.sleep(0.05)
            async with http.get(base + "/v1/audit/verify") as resp:
                assert (await resp.json())["ok"] is True
            for path in files.glob("checkpoints-*.jsonl"):
                path.unlink()
            async with http.get(base + "/v1/audit/verify") as resp:
                assert (await resp.json())["ok"] is True  # young entries may await theirs
            clock.shift = HOUR  # an hour later, nothing covers them: the files were deleted
            async with http.get(base + "/v1/audit/verify") as resp:
                answer = await resp.json()
            assert answer["ok"] is False, answer
            (problem,) = answer["checkpoints"]["problems"]
            assert problem["kind"] == "missing"
            assert "no checkpoint records, but 1 entries older than 60s" in problem["problem"]
    finally:
        await runner.cleanup()
