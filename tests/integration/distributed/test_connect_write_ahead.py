"""A gateway connect is write-ahead, like a push (``controlplane.service.live``): its
``connect`` ``sent`` entry is durable before the upstream is dialled, so a crash in between
never leaves a call the upstream ran with no record; a connect whose entry cannot be written
is refused with a clear close and never dialled.

Real faults: the emulator's slow upstream handshake shows the order (the entry is on disk
while the dial still waits); a real ``ENOSPC`` (``serve`` on an 8 MiB tmpfs in its own mount
namespace, filled through ``/proc/<pid>/root``) shows the refusal: no upstream session at the
emulator, the client told why (Voice Agent ``session.error`` + close 1011, Streaming v3
``Error`` + close 1011, the reason naming the version log and the kernel's error), the record
says what happened once the disk has room again, and connects work again without a restart.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.integration.distributed.conftest import Cluster, Replica
from tests.integration.distributed.disks import fill, on_tmpfs, rows, view_of
from tests.integration.distributed.harness import get, ready, spawn
from tests.integration.service.conftest import Emulator, eventually

AGENT_KEY = {"Authorization": "Bearer test-key"}
STREAMING_KEY = {"Authorization": "test-key"}
STREAMING = "/v3/ws?sample_rate=16000&speech_model=universal-3-5-pro"
NOT_WRITTEN = "not connected: the version log could not be written"


async def _faults(emulator: Emulator, spec: dict[str, Any]) -> None:
    async with emulator.http.post(f"{emulator.base}/_emulator/faults", json=spec) as resp:
        assert resp.status == 200, await resp.text()


async def _upstream_ids(emulator: Emulator) -> set[str]:
    async with emulator.http.get(f"{emulator.base}/_emulator/sessions") as resp:
        assert resp.status == 200, await resp.text()
        return {item["id"] for item in (await resp.json())["items"]}


async def _agent(replica: Replica) -> tuple[Any, dict[str, Any]]:
    """A Voice Agent client's first session.update and the first answer to it (the socket
    stays open when it is ``session.ready``)."""
    ws = await websockets.connect(replica.ws_base + "/v1/ws", additional_headers=AGENT_KEY)
    await ws.send(json.dumps({"type": "session.update", "session": {}}))
    return ws, json.loads(await asyncio.wait_for(ws.recv(), 10))


def _spawn_on_tmpfs(cluster: Cluster, node: str) -> tuple[Any, Replica, Path]:
    data_dir = cluster.settings(node).data_dir
    env = {"CONTROLPLANE_READINESS_STALL_S": "3"}
    proc = spawn(cluster, node, env=env, wrap=on_tmpfs(data_dir))
    cluster.procs.append(proc.proc)  # type: ignore[arg-type]
    port = int(proc.base.rsplit(":", 1)[1])
    replica = Replica(port, cluster.http, None, proc.data_dir)  # type: ignore[arg-type]
    return proc, replica, view_of(proc.proc.pid, proc.data_dir)


@pytest.mark.timeout(120)
async def test_the_connect_entry_is_on_disk_before_the_upstream_is_dialled(
    cluster: Cluster,
) -> None:
    proc = await asyncio.to_thread(spawn, cluster, "node-a")
    cluster.procs.append(proc.proc)  # type: ignore[arg-type]
    port = int(proc.base.rsplit(":", 1)[1])
    replica = Replica(port, cluster.http, None, proc.data_dir)  # type: ignore[arg-type]
    emulator = cluster.emulator
    try:
        await _faults(emulator, {"handshake_delay_ms": 1500})
        for wire_key in ("first_message", "connect"):  # Voice Agent, then Streaming v3
            known = await _upstream_ids(emulator)
            started = time.monotonic()
            if wire_key == "first_message":
                opening = asyncio.ensure_future(_agent(replica))
            else:
                opening = asyncio.ensure_future(websockets.connect(
                    replica.ws_base + STREAMING, additional_headers=STREAMING_KEY))  # fmt: skip

            def connect_on_disk(key: str = wire_key) -> list[dict[str, Any]]:
                return [r for r in rows(proc.data_dir) if r["cause"] == "connect"
                        and r["status"] == "sent" and key in (r["wire"] or {})]  # fmt: skip

            # while the upstream handshake (1.5 s) still waits, the entry is durable already
            [entry] = await eventually(connect_on_disk, timeout=1.2)
            assert time.monotonic() - started < 1.4, "the dial was not waiting any more"
            assert await _upstream_ids(emulator) == known  # the upstream has nothing yet
            result = await asyncio.wait_for(opening, 10)
            if isinstance(result, tuple):
                ws, answer = result
                assert answer["type"] == "session.ready", answer
            else:
                ws = result
                assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "Begin"
            await ws.close()
            assert len(await _upstream_ids(emulator) - known) == 1  # it ran, and is recorded
            session = await replica.session(entry["session_id"])
            assert session["end_cause"] in (None, "client_closed"), session
    finally:
        await _faults(emulator, {"handshake_delay_ms": 0})
        await asyncio.to_thread(proc.stop)
    assert "Traceback" not in proc.log()


@pytest.mark.timeout(180)
async def test_a_full_disk_refuses_gateway_connects_before_the_dial_with_a_clear_close(
    cluster: Cluster,
) -> None:
    proc, replica, view = await asyncio.to_thread(_spawn_on_tmpfs, cluster, "node-d")
    emulator = cluster.emulator
    try:
        ws, answer = await _agent(replica)  # the normal path first
        assert answer["type"] == "session.ready", answer
        await ws.close()
        filler = await asyncio.to_thread(fill, view, 0)

        # the log file's last page may still take an entry or two: connect until refused
        refused: tuple[dict[str, Any], Any] | None = None
        for _ in range(20):
            known = await _upstream_ids(emulator)
            ws, answer = await _agent(replica)
            if answer["type"] == "session.ready":
                await ws.close()
                continue
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            refused = answer, closed.value.rcvd
            assert await _upstream_ids(emulator) == known  # never dialled
            break
        assert refused is not None, "every connect was written on a full disk"
        error, close = refused
        assert error["type"] == "session.error" and error["code"] == "internal_error", error
        assert error["message"].startswith(NOT_WRITTEN), error
        assert "No space left on device" in error["message"], error
        assert close is not None and close.code == 1011, close
        assert close.reason.startswith("not connected: the version log"), close

        known = await _upstream_ids(emulator)
        streaming = await websockets.connect(replica.ws_base + STREAMING,
                                             additional_headers=STREAMING_KEY)  # fmt: skip
        frame = json.loads(await asyncio.wait_for(streaming.recv(), 10))
        assert frame["type"] == "Error" and frame["error_code"] == 1011, frame
        assert frame["error"].startswith(NOT_WRITTEN), frame
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(streaming.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        assert await _upstream_ids(emulator) == known  # no upstream session: never dialled

        assert await replica.metric("controlplane_audit_append_failures_total") >= 2
        ok, checks = await ready(replica.http, replica.base)
        assert not ok and "No space left on device" in checks["failing"]["audit_log"], checks
        status, _ = await get(cluster.http, replica.base + "/healthz")
        assert status == 200 and proc.proc.poll() is None

        filler.unlink()  # room again: connects work, no restart
        await eventually(lambda: _is_ready(replica), timeout=15)
        ws, answer = await _agent(replica)
        assert answer["type"] == "session.ready", answer
        await ws.close()

        # the record of each refused connect: sent, then rejected saying why; ended
        ended = await replica.call("GET", "/v1/sessions?state=ended&limit=100", expect=200)
        unwritable = [s for s in ended["items"] if s["end_cause"] == "version_log_unwritable"]
        assert sorted(s["kind"] for s in unwritable) == ["streaming-v3", "voice-agent-v1"]
        for session in unwritable:
            entries = await replica.log(session["id"])
            assert [(e["cause"], e["version"], e["status"]) for e in entries] == [
                ("connect", 1, "sent"), ("connect", 1, "rejected")], entries  # fmt: skip
            assert entries[1]["error"].startswith(NOT_WRITTEN), entries
            assert session["running_config"] is None, session
            at = entries[1]["at"] + 0.001
            answer = await replica.call("GET", f"/v1/sessions/{session['id']}/config-at?at={at}",
                                        expect=200)  # fmt: skip
            meaning = answer["established_by"]["meaning"]
            assert "never reached an upstream session" in meaning, answer
        verified = await replica.call("GET", "/v1/audit/verify", expect=200)
        assert verified["ok"] is True
    finally:
        await asyncio.to_thread(proc.stop)
    assert "Traceback" not in proc.log()


async def _is_ready(replica: Replica) -> bool:
    return (await ready(replica.http, replica.base))[0]
