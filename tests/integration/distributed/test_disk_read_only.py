"""The replica's disk fails under it: the kernel remounts the data dir read-only (``EIO`` for
writes to the log file already open, ``EROFS`` for every new open), as ext4 does after a
failed disk write with ``errors=remount-ro``.

Real faults: ``serve`` runs on an ext4 image on a loop device, mounted in its own mount
namespace (``tests/integration/distributed/disks.py``); the ext4 error is the kernel's own
(``trigger_fs_error`` calls ``ext4_error``: journal aborted, file system read-only). Then the
operator's repair: unmount, ``e2fsck``, mount again writable, without restarting the replica.

The record is the product: no frame leaves whose entry is not durable. Pushes whose entries
could not be written are refused "not sent" and re-sent once the log writes again (no
publish); a gateway connect is refused before the dial; ``/readyz`` and the audit alert's
metric say so; nothing written before the error is lost.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.integration.distributed.conftest import Cluster, Replica
from tests.integration.distributed.disks import (
    ext4_image,
    fs_error,
    mount_source,
    on_ext4,
    remount_repaired,
    rows,
    view_of,
)
from tests.integration.distributed.harness import get, ready, spawn
from tests.integration.service.conftest import eventually
from tests.integration.service.fleet import App, Fleet

N = 60
TERMINAL = ("acked", "rejected", "unverified", "skipped")
DISK_ERRORS = ("Input/output error", "Read-only file system")


async def _prompt_push(app: App, prompt: str, timeout: float) -> int | None:
    return await app.version_of_prompt(prompt, timeout)


@pytest.mark.timeout(240)
async def test_a_disk_remounted_read_only_refuses_pushes_until_repaired_and_loses_nothing(
    cluster: Cluster,
) -> None:
    data_dir = cluster.settings("node-e").data_dir
    image = await asyncio.to_thread(ext4_image, cluster.root / "node-e.img")
    env = {"CONTROLPLANE_READINESS_STALL_S": "3"}
    proc = await asyncio.to_thread(spawn, cluster, "node-e", env=env, wrap=on_ext4(data_dir, image))
    cluster.procs.append(proc.proc)  # type: ignore[arg-type]
    pid = proc.proc.pid
    device, read_only = mount_source(pid, data_dir)
    assert device.startswith("/dev/loop") and not read_only, device
    view = view_of(pid, data_dir)
    port = int(proc.base.rsplit(":", 1)[1])
    replica = Replica(port, cluster.http, None, proc.data_dir)  # type: ignore[arg-type]
    fleet = Fleet(replica.ws_base)
    try:
        apps = await fleet.open_apps(N, "ack")
        before = "before the disk error"
        await replica.publish({"id": "tone", "set": {"system_prompt": before}})
        first = await asyncio.gather(*(_prompt_push(app, before, 20) for app in apps))
        assert all(first), first.count(None)

        async def acked_on_disk() -> bool:
            acked = {r["session_id"] for r in rows(view) if r["status"] == "acked"}
            return acked >= {app.session_id for app in apps}

        await eventually(acked_on_disk, timeout=20)
        written = {(r["session_id"], r["seq"]) for r in rows(view)}

        await asyncio.to_thread(fs_error, pid, data_dir)  # the kernel: read-only from now
        assert mount_source(pid, data_dir)[1], "not remounted read-only"
        during = "during the disk error"
        await replica.publish({"id": "tone", "set": {"system_prompt": during}})
        got = await asyncio.gather(*(_prompt_push(app, during, 6) for app in apps))
        assert got.count(None) == N, "a push went while its entry could not be written"

        assert await replica.metric("controlplane_audit_append_failures_total") >= 1
        ok, checks = await ready(replica.http, replica.base)
        assert not ok and checks["audit_log"] is False, checks
        assert any(e in checks["failing"]["audit_log"] for e in DISK_ERRORS), checks
        status, _ = await get(cluster.http, replica.base + "/healthz")
        assert status == 200 and proc.proc.poll() is None

        # a gateway connect now: refused before the dial, the client told why
        key = {"Authorization": "Bearer test-key"}
        agent = await websockets.connect(replica.ws_base + "/v1/ws", additional_headers=key)
        await agent.send(json.dumps({"type": "session.update", "session": {}}))
        error = json.loads(await asyncio.wait_for(agent.recv(), 10))
        assert error["type"] == "session.error", error
        assert error["message"].startswith("not connected: the version log could not be written")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(agent.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011

        await asyncio.to_thread(remount_repaired, pid, data_dir, image)  # writable again
        assert not mount_source(pid, data_dir)[1]
        await eventually(lambda: _is_ready(replica), timeout=20)
        caught_up = await asyncio.gather(*(_prompt_push(app, during, 20) for app in apps))
        assert all(caught_up), caught_up.count(None)  # re-sent without another publish

        on_disk = rows(view)
        assert written <= {(r["session_id"], r["seq"]) for r in on_disk}  # nothing lost
        for app, version in zip(apps, caught_up, strict=True):
            entries = await eventually(lambda app=app: _settled(replica, app), timeout=15)  # type: ignore[misc]
            ends: dict[int, list[dict[str, Any]]] = {}
            for e in entries:
                if e["status"] in TERMINAL:
                    ends.setdefault(e["version"], []).append(e)
            assert all(len(end) == 1 for end in ends.values()), entries  # one state each
            acked = {v for v, [e] in ends.items() if e["status"] == "acked" and v > 1}
            assert acked == {first[apps.index(app)], version}, entries  # what the app got
            [refused] = [e for [e] in ends.values() if e["status"] == "rejected"]
            assert refused["error"].startswith("not sent: the version log could not be written")
            assert any(e in refused["error"] for e in DISK_ERRORS), refused
            seqs = [e["seq"] for e in entries]
            assert seqs == list(range(1, len(seqs) + 1)), seqs
        verified = await replica.call("GET", "/v1/audit/verify", expect=200)
        assert verified["ok"] is True, verified
    finally:
        await fleet.close()
        await asyncio.to_thread(proc.stop)
    assert "Traceback" not in proc.log()


async def _settled(replica: Replica, app: App) -> list[dict[str, Any]] | None:
    entries = await replica.log(app.session_id)
    ended = {e["version"] for e in entries if e["status"] in TERMINAL}
    sent = {e["version"] for e in entries if e["status"] == "sent" and e["version"] > 1}
    return entries if sent <= ended else None


async def _is_ready(replica: Replica) -> bool:
    return (await ready(replica.http, replica.base))[0]


@pytest.mark.timeout(180)
async def test_a_replica_stopped_on_a_failed_disk_logs_the_entries_it_could_not_write(
    cluster: Cluster,
) -> None:
    """No repair: the replica is stopped while its disk is read-only (what an operator does
    when the disk is gone). The entries waiting in memory (the refused pushes' `sent` and
    `rejected "not sent"`) cannot reach the disk: its log gives each, whole and in order,
    so the record survives in the process log and its chains continue from the disk's."""
    data_dir = cluster.settings("node-f").data_dir
    image = await asyncio.to_thread(ext4_image, cluster.root / "node-f.img")
    proc = await asyncio.to_thread(spawn, cluster, "node-f", wrap=on_ext4(data_dir, image))
    cluster.procs.append(proc.proc)  # type: ignore[arg-type]
    pid = proc.proc.pid
    view = view_of(pid, data_dir)
    port = int(proc.base.rsplit(":", 1)[1])
    replica = Replica(port, cluster.http, None, proc.data_dir)  # type: ignore[arg-type]
    fleet = Fleet(replica.ws_base)
    try:
        apps = await fleet.open_apps(20, "ack")
        await replica.publish({"id": "tone", "set": {"system_prompt": "before"}})
        assert all(await asyncio.gather(*(_prompt_push(a, "before", 20) for a in apps)))

        async def acked_on_disk() -> bool:
            acked = {r["session_id"] for r in rows(view) if r["status"] == "acked"}
            return acked >= {app.session_id for app in apps}

        await eventually(acked_on_disk, timeout=20)
        await asyncio.to_thread(fs_error, pid, data_dir)
        await replica.publish({"id": "tone", "set": {"system_prompt": "during"}})
        got = await asyncio.gather(*(_prompt_push(app, "during", 4) for app in apps))
        assert got.count(None) == len(apps)
        on_disk = rows(view)  # (readable still; gone with the process's mount namespace)
    finally:
        await fleet.close()
        await asyncio.to_thread(proc.stop)
    out = proc.log()
    assert "Traceback" not in out
    unwritten = [json.loads(line.split("unwritten entry: ", 1)[1])
                 for line in out.splitlines() if "unwritten entry: {" in line]  # fmt: skip
    assert unwritten, out[-3000:]
    for app in apps:
        disk = [r for r in on_disk if r["session_id"] == app.session_id]
        rest = [r for r in unwritten if r["session_id"] == app.session_id]
        assert [r["status"] for r in rest][-2:] == ["sent", "rejected"], rest
        chain = disk + rest  # the record, the disk's part then the process log's
        assert [r["seq"] for r in chain] == list(range(1, len(chain) + 1)), chain
        for before, after in itertools.pairwise(chain):
            assert after["prev_hash"] == before["hash"], (before, after)
