"""Honest readiness with real processes: ``/readyz`` turns 503 within seconds, naming the
check and why, when the policy consumer stalls (nats-server paused with SIGSTOP, a handler
stuck) or audit appends fail (the replica's file-size limit lowered under its version log:
real EFBIG from the kernel, even as root), and 200 again once the fault is gone, without a
restart of the replica. No audit entry is lost: entries appended during the failure are
written after it, in order, and the chain verifies locally and in ``CP_AUDIT``; no push goes
whose entry could not be written (refused, then re-sent once the log writes again)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
from pathlib import Path
from typing import Any

from controlplane import cli
from controlplane.edges.client import ControlClient
from controlplane.intake.bus import PolicyEvent
from tests.integration.distributed.conftest import Cluster, Replica, event
from tests.integration.distributed.harness import ready, spawn, stream_events
from tests.integration.service.conftest import ADMIN, eventually
from tests.support.servers import ServerProcess

STALL_S = 3.0  # the smallest readiness_stall_s the settings accept


async def _unready(replica: Replica) -> dict[str, Any] | None:
    ok, checks = await ready(replica.http, replica.base)
    return None if ok else checks


async def _ready(replica: Replica) -> bool:
    return (await ready(replica.http, replica.base))[0]


async def test_a_paused_nats_server_makes_readyz_503_naming_the_policy_feed_until_it_resumes(
    own_cluster: Cluster,
    own_nats: ServerProcess,
) -> None:
    # PINGs rarely: the client must not notice the pause by itself (that is
    # test_nats_connection.py), so only the feed watch can see it
    a = await own_cluster.start("node-a", readiness_stall_s=STALL_S, nats_ping_interval_s=600)
    assert await _ready(a)
    loop = asyncio.get_running_loop()
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    async with a.client() as app:
        pushes = app.pushes()
        os.kill(pid, signal.SIGSTOP)  # sockets stay open, nothing answers: a true stall
        try:
            paused = loop.time()
            checks = await eventually(lambda: _unready(a), timeout=STALL_S + 6)
            assert loop.time() - paused < STALL_S + 4
            assert checks["policy_feed"] is False
            assert checks["nats_connected"] is True  # the client has not noticed anything
            assert checks["failing"]["policy_feed"].startswith("NATS not answering policy")
            assert checks["audit_log"] is True  # the local log is fine
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed = loop.time()
        await eventually(lambda: _ready(a), timeout=10)
        assert loop.time() - resumed < 8
        # the same process, the same consumer loop: the next event still arrives
        doc = event({"id": "after", "version": 1, "set": {"system_prompt": "resumed"}})
        await own_cluster.publish_raw("after", doc, "after:1")
        push = await asyncio.wait_for(anext(pushes), 10)
        assert push.message["session"] == {"system_prompt": "resumed"}


async def test_a_stuck_policy_handler_makes_readyz_503_until_it_finishes(cluster: Cluster) -> None:
    a = await cluster.start("node-a", readiness_stall_s=STALL_S)
    release = asyncio.Event()

    async def slow(ev: PolicyEvent) -> None:  # a handler of ours that hangs on one policy
        if ev.policy_id == "slow":
            await release.wait()

    a.service.bus.subscribe(slow)
    await cluster.publish_raw("slow", event({"id": "slow", "version": 1, "set": {}}), "slow:1")
    try:
        checks = await eventually(lambda: _unready(a), timeout=STALL_S + 6)
        reason = checks["failing"]["policy_feed"]
        assert reason.startswith("policy event handler busy for ")
        assert reason.endswith(f"({cluster.subject_prefix}.policy.slow seq 1)")
    finally:
        release.set()
    await eventually(lambda: _ready(a), timeout=5)


async def _refused(replica: Replica, sid: str) -> dict[str, Any] | None:
    """The session's push that ended "not sent" (the version log could not be written)."""
    for e in await replica.log(sid):
        if e["status"] == "rejected" and str(e.get("error")).startswith("not sent: the version"):
            return dict(e)
    return None


def _fsize(pid: int, soft: int) -> tuple[int, int]:
    old = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, old[1]))
    return old


async def test_failing_audit_writes_make_readyz_503_and_no_entry_is_lost(
    cluster: Cluster,
) -> None:
    env = {"CONTROLPLANE_READINESS_STALL_S": str(STALL_S)}
    proc = await asyncio.to_thread(spawn, cluster, "node-w", env=env)
    cluster.procs.append(proc.proc)  # type: ignore[arg-type]
    replica = Replica(int(proc.base.rsplit(":", 1)[1]), cluster.http, None, proc.data_dir)  # type: ignore[arg-type]
    url = proc.base.replace("http://", "ws://") + "/v1/control"
    try:
        async with ControlClient(
            url, token=ADMIN, kind="voice-agent-v1", model="voice-agent"
        ) as app:
            sid = app.session_id
            assert sid is not None
            pushes = app.pushes()

            async def publish_and_apply(prompt: str) -> int:
                await replica.publish({"id": "tone", "set": {"system_prompt": prompt}})
                push = await asyncio.wait_for(anext(pushes), 10)
                assert push.message["session"] == {"system_prompt": prompt}
                await app.applied(push.version)
                return push.version

            await publish_and_apply("before")

            def listed() -> list[Path]:
                return sorted((proc.data_dir / "audit").glob("versionlog-*.jsonl"))

            files = await eventually(listed)
            assert len(files) == 1

            async def on_disk() -> int:  # every entry so far is in the file (the log flushes)
                logged = len(await replica.log(sid))
                rows = [json.loads(ln) for ln in files[0].read_bytes().splitlines()]
                mine = [r for r in rows if r.get("session_id") == sid]
                return files[0].stat().st_size if len(mine) == logged else 0

            size = await eventually(on_disk)
            old = _fsize(proc.proc.pid, size)  # the file cannot grow: every write fails (EFBIG)
            try:
                await replica.publish({"id": "tone", "set": {"system_prompt": "during"}})
                checks = await eventually(lambda: _unready(replica), timeout=STALL_S + 5)
                assert checks["audit_log"] is False
                reason = checks["failing"]["audit_log"]
                assert "version log writes failing" in reason and "File too large" in reason
                # its entry could not be written: the push was not sent (nothing unrecorded)
                with contextlib.suppress(TimeoutError):
                    unsent = await asyncio.wait_for(anext(pushes), 1.0)
                    raise AssertionError(f"sent while its entry could not be written: {unsent}")
                assert files[0].stat().st_size == size  # nothing half-written
            finally:
                resource.prlimit(proc.proc.pid, resource.RLIMIT_FSIZE, old)
            await eventually(lambda: _ready(replica), timeout=5)
            refused = await eventually(lambda: _refused(replica, sid), timeout=10)
            assert "File too large" in refused["error"]
            # owed: the refused config comes as a new version once the log writes again
            pushes = app.pushes()  # (the cancelled wait ended the previous iterator)
            push = await asyncio.wait_for(anext(pushes), 10)
            assert push.message["session"] == {"system_prompt": "during"}
            assert push.version > refused["version"]
            await app.applied(push.version)
            during = [push.version]
            after = await publish_and_apply("after")

        entries = await replica.log(sid)
        assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
        statuses = {(e["version"], e["status"]) for e in entries}
        assert {(refused["version"], "sent"), (refused["version"], "rejected")} <= statuses
        for version in (*during, after):  # re-sent after the outage, then the next one
            assert {(version, "sent"), (version, "acked")} <= statuses
        rows = [json.loads(ln) for f in files for ln in f.read_bytes().splitlines()]
        mine = [r for r in rows if r.get("session_id") == sid]  # not checkpoints, if any
        assert len(mine) == len(entries)  # written once each, no duplicate of a retried batch
        verified = await replica.call("GET", f"/v1/audit/verify?session={sid}", expect=200)
        assert verified["ok"] is True
        local = ["audit", "verify", sid, "--data-dir", str(proc.data_dir)]  # files, no server
        assert await asyncio.to_thread(cli.main, local) == 0

        async def durable() -> bool:  # and shipped to CP_AUDIT, once each
            stored = await stream_events(cluster.nats_url, cluster.audit_stream)
            seqs = sorted({r["seq"] for m in stored for r in m.rows if r.get("session_id") == sid})
            return seqs == [e["seq"] for e in entries]

        await eventually(durable, timeout=10)
        args = ["audit", "verify", sid, "--nats-url", cluster.nats_url, "--nats-audit-stream",
                cluster.audit_stream, "--nats-subject-prefix", cluster.subject_prefix]  # fmt: skip
        assert await asyncio.to_thread(cli.main, args) == 0
    finally:
        await asyncio.to_thread(proc.stop)
    assert "File too large" in proc.log()
