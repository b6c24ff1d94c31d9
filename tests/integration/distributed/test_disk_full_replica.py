"""One replica's disk fills up in distributed mode: two replicas on real NATS and Redis, the
full one (``serve`` on an 8 MiB tmpfs in its own mount namespace, ``ENOSPC`` from the
kernel) and a healthy one, control-channel apps on both, a version published on the healthy
one while the other's disk is full.

The healthy replica's apps get the version at once; the full replica refuses its pushes
"not sent" (no frame without a durable entry), says so on ``/readyz`` while the healthy one
stays ready; the entries it wrote before the disk filled reach ``CP_AUDIT`` during the outage
(the remote copy matters most then); a session log that cannot be flushed first answers 503
naming why, while the other replica serves the durable trail; once there is room its apps get
the version without another publish, every entry it wrote reaches ``CP_AUDIT`` as written,
and its log said the outage once, not every flush tick.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.integration.distributed.conftest import Cluster, Replica
from tests.integration.distributed.disks import fill, on_tmpfs, rows, view_of
from tests.integration.distributed.harness import ready, spawn
from tests.integration.distributed.test_faults import cp_audit_rows, listed
from tests.integration.service.conftest import eventually
from tests.integration.service.fleet import Fleet

APPS = 40  # per replica
TERMINAL = ("acked", "rejected", "unverified", "skipped")


@pytest.mark.timeout(240)
async def test_one_replicas_full_disk_refuses_its_pushes_and_nothing_else(
    cluster: Cluster,
) -> None:
    data_dir = cluster.settings("node-d").data_dir
    # ships every 3 s: the entries written just before the disk fills are not shipped yet
    env = {"CONTROLPLANE_READINESS_STALL_S": "3", "CONTROLPLANE_AUDIT_SHIP_INTERVAL_S": "3"}
    proc = await asyncio.to_thread(spawn, cluster, "node-d", env=env, wrap=on_tmpfs(data_dir))
    cluster.procs.append(proc.proc)  # type: ignore[arg-type]
    view = view_of(proc.proc.pid, proc.data_dir)
    port = int(proc.base.rsplit(":", 1)[1])
    full = Replica(port, cluster.http, None, proc.data_dir)  # type: ignore[arg-type]
    healthy = await cluster.start("node-b")
    on_full, on_healthy = Fleet(full.ws_base), Fleet(healthy.ws_base)
    try:
        full_apps = await on_full.open_apps(APPS, "ack")
        healthy_apps = await on_healthy.open_apps(APPS, "ack")
        await healthy.publish({"id": "tone", "set": {"system_prompt": "v1"}})
        got = await asyncio.gather(
            *(app.version_of_prompt("v1", 15) for app in full_apps + healthy_apps)
        )
        assert all(got), got.count(None)

        def acked_on_disk() -> bool:
            acked = {r["session_id"] for r in rows(view) if r["status"] == "acked"}
            return acked >= {app.session_id for app in full_apps}

        await eventually(acked_on_disk, timeout=15)
        filler = await asyncio.to_thread(fill, view, 0)
        written = _by_session(rows(view))  # durable before the disk filled
        assert not await _shipped(healthy, written), "shipped before the disk filled"

        await healthy.publish({"id": "tone", "set": {"system_prompt": "v2"}})
        got_healthy = await asyncio.gather(
            *(app.version_of_prompt("v2", 10) for app in healthy_apps)
        )
        assert all(got_healthy), got_healthy.count(None)  # the other replica: unaffected
        got_full = await asyncio.gather(*(app.version_of_prompt("v2", 4) for app in full_apps))
        on_disk = {(r["session_id"], r["version"], r["status"]) for r in rows(view)}
        for app, version in zip(full_apps, got_full, strict=True):
            if version is not None:  # (the file's last page took a few): recorded first
                assert (app.session_id, version, "sent") in on_disk
        refused = [app for app, v in zip(full_apps, got_full, strict=True) if v is None]
        assert len(refused) > APPS // 2, len(refused)

        async def shipped_meanwhile() -> bool:  # the remote copy, while the disk is full
            return await _shipped(healthy, written)  # (and refused entries wait in memory)

        await eventually(shipped_meanwhile, timeout=15, interval=0.5)
        ok, checks = await ready(full.http, full.base)
        assert not ok and "No space left on device" in checks["failing"]["audit_log"], checks
        assert (await ready(healthy.http, healthy.base))[0] is True
        # a refused session's log: its own replica cannot write (flush) the newest entries
        # first, so it says why (503, not an internal error); the other replica serves the
        # durable trail (owner request, else CP_AUDIT)
        sid = refused[0].session_id
        answer = await full.call("GET", f"/v1/sessions/{sid}/log", expect=503)
        assert answer["error"]["code"] == "backend_unavailable", answer
        assert "No space left on device" in answer["error"]["message"], answer
        durable = await healthy.log(sid)
        assert [e["seq"] for e in durable] == list(range(1, len(durable) + 1)), durable
        assert any(e["status"] == "acked" and e["version"] == 2 for e in durable), durable
        everyone = {app.session_id for app in full_apps + healthy_apps}
        assert set(await listed(healthy)) == everyone  # the registry holds them all

        filler.unlink()  # room again: the refused get v2 without another publish
        caught = await asyncio.gather(*(app.version_of_prompt("v2", 20) for app in refused))
        assert all(caught), caught.count(None)
        await eventually(lambda: _ready(full), timeout=15)

        async def settled() -> bool:
            for app in full_apps:
                entries = await full.log(app.session_id)
                ends: dict[int, list[str]] = {}
                for e in entries:
                    if e["status"] in TERMINAL:
                        ends.setdefault(e["version"], []).append(e["status"])
                sent = {e["version"] for e in entries if e["status"] == "sent" and e["version"] > 1}
                assert sent <= set(ends), entries
                for e in entries:
                    if e["status"] == "rejected":
                        assert e["error"].startswith("not sent: the version log could not be")
                assert all(len(s) == 1 for s in ends.values()), entries
            return True

        await eventually(settled, timeout=15)

        async def shipped() -> bool:  # every entry the full replica wrote, as written
            return await _shipped(healthy, _by_session(rows(view)))

        await eventually(shipped, timeout=20, interval=0.3)
        verified = await full.call("GET", "/v1/audit/verify", expect=200)
        assert verified["ok"] is True
    finally:
        await on_full.close()
        await on_healthy.close()
        await asyncio.to_thread(proc.stop)
    out = proc.log()
    assert "Traceback" not in out
    # the outage said once, not every 50 ms flush tick (~20 lines a second before)
    assert out.count("version log flush failed") <= 2, out.count("version log flush failed")


def _by_session(found: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in found:
        out.setdefault(row["session_id"], []).append(row)
    return out


async def _shipped(replica: Replica, local: dict[str, list[dict[str, Any]]]) -> bool:
    """Whether ``CP_AUDIT`` holds every one of these entries, as written."""
    durable = await cp_audit_rows(replica)
    return all(durable.get(sid, [])[: len(r)] == r for sid, r in local.items())


async def _ready(replica: Replica) -> bool:
    return (await ready(replica.http, replica.base))[0]
