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
import fcntl
import itertools
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from controlplane.cli.datadir import LOCK_FILE
from tests.integration.distributed.conftest import EXE, Cluster, Replica
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
        # the data dir's lock follows the repaired disk: a second replica is refused there
        await eventually(lambda: _locked_by(view, pid), timeout=10)
        caught_up = await asyncio.gather(*(_prompt_push(app, during, 20) for app in apps))
        assert all(caught_up), caught_up.count(None)  # re-sent without another publish

        on_disk = rows(view)
        lost = written - {(r["session_id"], r["seq"]) for r in on_disk}
        assert not lost, (len(lost), sorted(lost)[:5])  # nothing lost
        for app, version in zip(apps, caught_up, strict=True):
            entries = await eventually(lambda app=app: _settled(replica, app), timeout=15)  # type: ignore[misc]
            ends: dict[int, list[dict[str, Any]]] = {}
            for e in entries:
                if e["status"] in TERMINAL:
                    ends.setdefault(e["version"], []).append(e)
            said = _compact(entries)  # (a failure says the session's whole record, short)
            assert all(len(end) == 1 for end in ends.values()), said  # one state each
            acked = {v for v, [e] in ends.items() if e["status"] == "acked" and v > 1}
            assert acked == {first[apps.index(app)], version}, said  # what the app got
            refusals = [e for [e] in ends.values() if e["status"] == "rejected"]
            assert len(refusals) == 1, said
            [refused] = refusals
            assert refused["error"].startswith("not sent: the version log could not be written")
            assert any(e in refused["error"] for e in DISK_ERRORS), said
            seqs = [e["seq"] for e in entries]
            assert seqs == list(range(1, len(seqs) + 1)), said
        verified = await replica.call("GET", "/v1/audit/verify", expect=200)
        assert verified["ok"] is True, verified
    finally:
        await fleet.close()
        await asyncio.to_thread(proc.stop)
    assert "Traceback" not in proc.log()


def _compact(entries: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Each entry as (seq, version, status, cause, error's first 70 characters)."""
    return [(e["seq"], e["version"], e["status"], e.get("cause"), (e.get("error") or "")[:70])
            for e in entries]  # fmt: skip


async def _settled(replica: Replica, app: App) -> list[dict[str, Any]] | None:
    entries = await replica.log(app.session_id)
    ended = {e["version"] for e in entries if e["status"] in TERMINAL}
    sent = {e["version"] for e in entries if e["status"] == "sent" and e["version"] > 1}
    return entries if sent <= ended else None


async def _locked_by(view: Path, pid: int) -> bool:
    """The lock file at the data dir is held (``flock``), by ``pid`` as it says."""
    fd = os.open(view / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.read(fd, 64).decode().strip() == str(pid)
    finally:
        os.close(fd)  # (a lock taken here goes with it)
    return False


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


@pytest.mark.timeout(240)
async def test_entries_a_dead_disk_refused_are_spilled_and_recovered_into_the_log(
    cluster: Cluster,
) -> None:
    """With ``audit_spill_dir`` on another disk, a replica stopped on its failed disk keeps the
    entries waiting in memory in a spill file there (not only in the process log); after the
    repair (``e2fsck``), ``controlplane audit recover`` appends them to the data dir's log,
    each chain verified first: the log then holds every entry, the replica restarted on it
    verifies, and a second recovery of the same file is refused with nothing appended."""
    data_dir = cluster.settings("node-g").data_dir
    image = await asyncio.to_thread(ext4_image, cluster.root / "node-g.img")
    spill_dir = cluster.root / "spill"  # (the test's own file system: another disk)
    env = {"CONTROLPLANE_AUDIT_SPILL_DIR": str(spill_dir)}
    proc = await asyncio.to_thread(spawn, cluster, "node-g", env=env,
                                   wrap=on_ext4(data_dir, image))  # fmt: skip
    cluster.procs.append(proc.proc)  # type: ignore[arg-type]
    pid = proc.proc.pid
    view = view_of(pid, data_dir)
    replica = Replica(int(proc.base.rsplit(":", 1)[1]), cluster.http, None, proc.data_dir)  # type: ignore[arg-type]
    fleet = Fleet(replica.ws_base)
    try:
        apps = await fleet.open_apps(10, "ack")
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
        on_disk = rows(view)
    finally:
        await fleet.close()
        await asyncio.to_thread(proc.stop)
    out = proc.log()
    assert "Traceback" not in out and "unwritten entry:" not in out, out[-3000:]
    [spilled] = sorted(spill_dir.glob("unwritten-*.jsonl"))
    assert f"kept in {spilled}" in out, out[-3000:]
    kept = [json.loads(line) for line in spilled.read_bytes().splitlines()]
    assert {r["session_id"] for r in kept} == {app.session_id for app in apps}

    # the repair: the image checked; recovery runs with the data dir mounted again
    await asyncio.to_thread(_fsck, image)
    recover = [*on_ext4(data_dir, image), EXE, "audit", "recover", "--data-dir", str(data_dir),
               str(spilled)]  # fmt: skip
    done = await asyncio.to_thread(_run, recover)
    assert done.returncode == 0, done.stderr
    assert f"entries of {len(apps)} sessions" in done.stdout, done.stdout
    again = await asyncio.to_thread(_run, recover)  # the same file twice: refused
    assert again.returncode == 1 and "in the log already" in again.stderr, again

    proc = await asyncio.to_thread(spawn, cluster, "node-g", env=env,
                                   wrap=on_ext4(data_dir, image))  # fmt: skip
    cluster.procs.append(proc.proc)  # type: ignore[arg-type]
    replica = Replica(int(proc.base.rsplit(":", 1)[1]), cluster.http, None, proc.data_dir)  # type: ignore[arg-type]
    try:
        after = rows(view_of(proc.proc.pid, data_dir))
        # once each (a write whose fdatasync failed may have reached the disk: not twice)
        assert len({(r["session_id"], r["seq"]) for r in after}) == len(after)
        assert {r["hash"] for r in on_disk + kept} <= {r["hash"] for r in after}
        for app in apps:
            chain = [r for r in after if r["session_id"] == app.session_id]
            assert [r["status"] for r in chain][-2:] == ["sent", "rejected"], chain
            assert [r["seq"] for r in chain] == list(range(1, len(chain) + 1)), chain
        verified = await replica.call("GET", "/v1/audit/verify", expect=200)
        assert verified["ok"] is True, verified
    finally:
        await asyncio.to_thread(proc.stop)


def _fsck(image: Path) -> None:
    done = subprocess.run(["e2fsck", "-f", "-y", str(image)], check=False, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode in (0, 1), done  # 1: errors corrected


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60, env=env)
