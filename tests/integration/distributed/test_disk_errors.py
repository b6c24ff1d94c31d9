"""The replica's data directory fills up in the middle of a fan-out: a real ``ENOSPC``.

``controlplane serve`` runs in its own mount namespace on a small tmpfs (``unshare --mount``,
then ``mount -t tmpfs -o size=…`` over its data dir: the kernel's own "No space left on
device", also under root); the test sees that file system through ``/proc/<pid>/root`` and
fills it with a file, leaving room for about one write-ahead chunk of the next fan-out's
entries. 600 control-channel apps that acknowledge every push are on the replica.

The record is the product: no frame may leave whose version-log entry is not on disk. Pushes
whose entries could not be written are refused before sending (``rejected`` "not sent: the
version log could not be written …"), the replica keeps serving (``/healthz``), ``/readyz``
says why it is not ready, and once there is room again every refused session gets its desired
config without another publish, each push ending in one recorded state, the record equal to
what each app got.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.distributed.conftest import Cluster, Replica
from tests.integration.distributed.disks import TMPFS_BYTES
from tests.integration.distributed.disks import fill as _fill
from tests.integration.distributed.disks import on_tmpfs as _on_tmpfs
from tests.integration.distributed.disks import rows as _rows
from tests.integration.distributed.harness import get, ready, spawn
from tests.integration.service.conftest import eventually
from tests.integration.service.fleet import App, Fleet

N = 600
TERMINAL = ("acked", "rejected", "unverified", "skipped")


async def _prompt_push(app: App, prompt: str, after: int, timeout: float) -> int | None:
    """The version of the first push after ``after`` that sets ``prompt``, within ``timeout``."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        push = await app.next_push(left)
        if push is None:
            return None
        if push.version > after and push.message.get("session") == {"system_prompt": prompt}:
            return push.version
    return None


@pytest.mark.timeout(240)
async def test_a_full_disk_mid_fan_out_sends_nothing_unrecorded_and_owed_sessions_catch_up(
    cluster: Cluster,
) -> None:
    data_dir = cluster.settings("node-d").data_dir
    env = {"CONTROLPLANE_READINESS_STALL_S": "3"}
    proc = await asyncio.to_thread(spawn, cluster, "node-d", env=env, wrap=_on_tmpfs(data_dir))
    cluster.procs.append(proc.proc)  # type: ignore[arg-type]
    view = Path(f"/proc/{proc.proc.pid}/root") / str(proc.data_dir).lstrip("/")
    st = os.statvfs(view)
    assert st.f_blocks * st.f_frsize == TMPFS_BYTES  # the replica writes to the small tmpfs
    port = int(proc.base.rsplit(":", 1)[1])
    replica = Replica(port, cluster.http, None, proc.data_dir)  # type: ignore[arg-type]
    fleet = Fleet(replica.ws_base)
    try:
        apps: list[App] = []
        for _ in range(N // 100):
            apps += await fleet.open_apps(100, "ack")
        before = "before " + "b" * 100
        await replica.publish({"id": "tone", "set": {"system_prompt": before}})
        got = await asyncio.gather(*(_prompt_push(app, before, 0, 20) for app in apps))
        assert all(got), got.count(None)
        first = {app.session_id: v for app, v in zip(apps, got, strict=True)}

        async def all_on_disk() -> list[dict[str, Any]] | None:
            rows = _rows(view)
            acked = {r["session_id"] for r in rows if r["status"] == "acked"}
            return rows if acked >= set(first) else None

        rows = await eventually(all_on_disk, timeout=20)
        sent = [len(json.dumps(r)) for r in rows if r["status"] == "sent" and r["version"] > 1]
        # room for about one write-ahead chunk (256 pushes) of the next fan-out's entries
        filler = _fill(view, keep=int(sum(sent) / len(sent) * 256 * 1.2))

        during = "during " + "d" * 100
        await replica.publish({"id": "tone", "set": {"system_prompt": during}})
        got = await asyncio.gather(
            *(_prompt_push(app, during, first[app.session_id], 8) for app in apps)
        )
        # nothing unrecorded: every frame an app got has its `sent` entry on disk already
        on_disk = {(r["session_id"], r["version"], r["status"]) for r in _rows(view)}
        for app, version in zip(apps, got, strict=True):
            if version is not None:
                assert (app.session_id, version, "sent") in on_disk, (app.session_id, version)
        refused = [app for app, version in zip(apps, got, strict=True) if version is None]
        assert refused, "the disk filled after the whole fan-out was written"
        # the audit alert's metric counts it (docs/deploy.md#controlplaneauditappendfailures)
        assert await replica.metric("controlplane_audit_append_failures_total") >= 1
        checks = await eventually(lambda: _not_ready(replica), timeout=10)
        assert checks["audit_log"] is False
        assert "No space left on device" in checks["failing"]["audit_log"]
        started = time.monotonic()
        status, _ = await get(cluster.http, replica.base + "/healthz")
        assert status == 200 and time.monotonic() - started < 2  # serving, not stalled
        assert proc.proc.poll() is None

        filler.unlink()  # room again: no publish, the refused sessions get their config
        await eventually(lambda: _is_ready(replica), timeout=15)
        caught_up = await asyncio.gather(
            *(_prompt_push(app, during, first[app.session_id], 15) for app in refused)
        )
        assert all(caught_up), caught_up.count(None)

        received = {app.session_id: {first[app.session_id]} for app in apps}
        for app, version in zip(apps, got, strict=True):
            if version is not None:
                received[app.session_id].add(version)
        for app, version in zip(refused, caught_up, strict=True):
            assert version is not None
            received[app.session_id].add(version)

        async def settled(app: App) -> list[dict[str, Any]] | None:
            entries = await replica.log(app.session_id)
            ends: dict[int, list[str]] = {}
            for e in entries:
                if e["status"] in TERMINAL:
                    ends.setdefault(e["version"], []).append(e["status"])
            sent = {e["version"] for e in entries if e["status"] == "sent" and e["version"] > 1}
            return entries if sent <= set(ends) else None

        refused_ids = {app.session_id for app in refused}
        for app in apps:
            entries = await eventually(lambda app=app: settled(app), timeout=15)  # type: ignore[misc]
            ends: dict[int, list[dict[str, Any]]] = {}
            for e in entries:
                if e["status"] in TERMINAL:
                    ends.setdefault(e["version"], []).append(e)
            for version, end in ends.items():
                assert len(end) == 1, (app.session_id, version, end)  # one recorded state each
            # the record equals what the app got: acked exactly the versions it received
            acked = {v for v, [e] in ends.items() if e["status"] == "acked" and v > 1}
            assert acked == received[app.session_id], (app.session_id, entries)
            not_sent = {v for v, [e] in ends.items() if e["status"] == "rejected"}
            if app.session_id in refused_ids:
                assert len(not_sent) == 1, entries
                [error] = [ends[v][0]["error"] for v in not_sent]
                assert error.startswith("not sent: the version log could not be written")
                assert "No space left on device" in error
            else:
                assert not not_sent, entries
        verified = await replica.call("GET", "/v1/audit/verify", expect=200)
        assert verified["ok"] is True
    finally:
        await fleet.close()
        await asyncio.to_thread(proc.stop)
    assert "Traceback" not in proc.log()


async def _not_ready(replica: Replica) -> dict[str, Any] | None:
    ok, checks = await ready(replica.http, replica.base)
    return None if ok else checks


async def _is_ready(replica: Replica) -> bool:
    return (await ready(replica.http, replica.base))[0]
