"""A replica becomes a NATS slow consumer: nats-server (``write_deadline`` 1 s, ``max_pending``
256 KiB) cannot flush to it while it is stopped (SIGSTOP) and 4 MiB of messages are published
on its owner-request subject, so the server closes its connection ("Slow Consumer Detected",
the messages dropped). A policy is published on the other replica meanwhile; then the stopped
one resumes.

Once resumed it sees the connection gone ("unexpected EOF"), reconnects by itself, fetches and
applies the version it missed, pushes it to its apps (one recorded state each), ships its
entries to ``CP_AUDIT`` (shipping said it failed meanwhile and kept them on disk), and is
ready; no traceback. No change was needed.
"""

from __future__ import annotations

import asyncio
import os
import signal

import nats
import pytest

from controlplane.audit.reader import dedupe
from tests.integration.distributed.conftest import Cluster, Replica
from tests.integration.distributed.harness import ready, spawn
from tests.integration.distributed.test_faults import cp_audit_rows, local_rows
from tests.integration.service.conftest import eventually
from tests.integration.service.fleet import Fleet
from tests.support.servers import ServerProcess

APPS = 30
TERMINAL = ("acked", "rejected", "unverified", "skipped")
FLOOD = 64  # messages of 64 KiB: 4 MiB


@pytest.mark.timeout(120)
async def test_a_replica_the_nats_server_drops_as_a_slow_consumer_recovers_by_itself(
    own_cluster: Cluster, own_nats: ServerProcess
) -> None:
    conf = own_nats.workdir / "slow.conf"
    conf.write_text('write_deadline: "1s"\nmax_pending: 262144\nmax_payload: 131072\n')
    own_nats.stop()
    own_nats.argv += ["-c", str(conf)]
    own_nats.start()
    cluster = own_cluster
    b = await cluster.start("node-b")
    proc = await asyncio.to_thread(spawn, cluster, "node-a")
    cluster.procs.append(proc.proc)  # type: ignore[arg-type]
    a = Replica(int(proc.base.rsplit(":", 1)[1]), cluster.http, None, proc.data_dir)  # type: ignore[arg-type]
    fleet = Fleet(a.ws_base)
    flooder = await nats.connect(own_nats.url)
    try:
        apps = await fleet.open_apps(APPS, "ack")
        await b.publish({"id": "tone", "set": {"system_prompt": "v0"}})
        assert all(await asyncio.gather(*(x.version_of_prompt("v0", 20) for x in apps)))

        os.kill(proc.proc.pid, signal.SIGSTOP)
        try:
            subject = f"{cluster.subject_prefix}.node.node-a.log"
            for _ in range(FLOOD):
                await flooder.publish(subject, b"x" * 65536)
            await flooder.flush()
            await b.publish({"id": "tone", "set": {"system_prompt": "v1"}})

            def dropped() -> bool:
                return "Slow Consumer" in (own_nats.workdir / "server.log").read_text()

            await eventually(dropped, timeout=15)
        finally:
            os.kill(proc.proc.pid, signal.SIGCONT)

        got = await asyncio.gather(*(x.version_of_prompt("v1", 30) for x in apps))
        assert all(got), got.count(None)

        async def is_ready() -> bool:
            return (await ready(a.http, a.base))[0]

        await eventually(is_ready, timeout=30)
        for app in apps:
            entries = await eventually(lambda s=app.session_id: b.log(s), timeout=15)  # through a
            ends: dict[int, list[str]] = {}
            for e in entries:
                if e["status"] in TERMINAL:
                    ends.setdefault(e["version"], []).append(e["status"])
            sent = {e["version"] for e in entries if e["status"] == "sent" and e["version"] > 1}
            assert sent <= set(ends) and all(len(s) == 1 for s in ends.values()), entries

        local = local_rows(proc.data_dir)

        async def shipped() -> bool:
            durable = await cp_audit_rows(b)
            missing = [sid for sid, rows in local.items() if dedupe(durable.get(sid, [])) != rows]
            assert not missing, (len(missing), missing[:3])
            return True

        await eventually(shipped, timeout=30, interval=0.5)
    finally:
        await flooder.close()
        await fleet.close()
        await asyncio.to_thread(proc.stop)
    out = proc.log()
    assert "Traceback" not in out, out[-3000:]
    assert "NATS reconnected" in out, out[-3000:]
