"""A replica frozen for 20 s (SIGSTOP: its sockets stay open, it answers nothing), then
resumed (SIGCONT), while the other replica goes on and a policy changes.

While it is frozen the other replica declares it lost after the TTL and ends its sessions in
the registry (``node_lost``). It still holds their sockets, and its apps are still connected:
once it runs again it must not act on that stale picture. It applies the policy event it
missed and pushes it to its sessions, it puts them back in the registry as live, with their
current versions, and every entry it writes for them is in ``CP_AUDIT`` once, the trails
verifying.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

from tests.integration.distributed.conftest import TTL_S, Cluster, Replica
from tests.integration.distributed.harness import spawn, stream_events
from tests.integration.service.conftest import eventually
from tests.integration.service.fleet import Fleet

FROZEN_S = 20.0


@pytest.mark.timeout(120)
async def test_a_replica_frozen_20_s_catches_up_and_puts_its_sessions_back(
    cluster: Cluster,
) -> None:
    b = await cluster.start("node-b")
    proc = await asyncio.to_thread(spawn, cluster, "node-a")
    cluster.procs.append(proc.proc)  # type: ignore[arg-type]
    a = Replica(int(proc.base.rsplit(":", 1)[1]), cluster.http, None, proc.data_dir)  # type: ignore[arg-type]
    on_a, on_b = Fleet(a.ws_base), Fleet(b.ws_base)
    try:
        apps_a = await on_a.open_apps(5, "ack")
        apps_b = await on_b.open_apps(5, "ack")
        ids_a = {app.session_id for app in apps_a}

        async def listed(ids: set[str]) -> dict[str, dict[str, Any]] | None:
            body = await b.call("GET", "/v1/sessions?limit=1000", expect=200)
            live = {s["id"]: s for s in body["items"] if s["id"] in ids}
            return live if set(live) == ids else None

        await eventually(lambda: listed(ids_a), timeout=10)
        os.kill(proc.proc.pid, signal.SIGSTOP)
        frozen_at = asyncio.get_running_loop().time()
        try:

            async def ended() -> bool:  # the other replica declared it lost
                body = await b.call("GET", "/v1/sessions?limit=1000", expect=200)
                return not ids_a & {s["id"] for s in body["items"]}

            await eventually(ended, timeout=TTL_S * 6)
            await b.publish({"id": "tone", "set": {"system_prompt": "while frozen"}})
            got_b = await asyncio.gather(
                *(app.version_of_prompt("while frozen", 10) for app in apps_b)
            )
            assert all(got_b)
            await asyncio.sleep(frozen_at + FROZEN_S - asyncio.get_running_loop().time())
        finally:
            os.kill(proc.proc.pid, signal.SIGCONT)

        # it catches up: the event it missed, pushed to every session it holds
        got_a = await asyncio.gather(*(app.version_of_prompt("while frozen", 15) for app in apps_a))
        assert all(got_a), got_a

        # and its sessions are live again in the registry, with their current versions
        async def current() -> dict[str, dict[str, Any]] | None:
            live = await listed(ids_a)
            if live is None:
                return None
            ok = all(s["node"] == "node-a" and s["state"] == "synced" for s in live.values())
            return live if ok else None

        live = await eventually(current, timeout=15)
        for app, version in zip(apps_a, got_a, strict=True):
            assert live[app.session_id]["versions"]["acked"] == version, live[app.session_id]

        # a policy change after the freeze reaches both replicas' sessions
        await b.publish({"id": "tone", "set": {"system_prompt": "after"}})
        after = await asyncio.gather(
            *(app.version_of_prompt("after", 10) for app in apps_a + apps_b)
        )
        assert all(after), after

        # every entry it wrote is in CP_AUDIT once, and each trail verifies there
        async def shipped() -> bool:
            held: dict[str, list[int]] = {}
            for message in await stream_events(cluster.nats_url, cluster.audit_stream):
                for row in message.rows if "._checkpoint." not in message.subject else ():
                    held.setdefault(row["session_id"], []).append(row["seq"])
            for sid in ids_a:
                local = [e["seq"] for e in await a.log(sid)]
                if sorted(set(held.get(sid, ()))) != local:
                    return False
            return True

        await eventually(shipped, timeout=15)
        for sid in ids_a:
            answer = await b.call("GET", f"/v1/audit/verify?session={sid}", expect=200)
            assert answer["ok"] is True, answer
    finally:
        await on_a.close()
        await on_b.close()
        await asyncio.to_thread(proc.stop)
    assert "Traceback" not in proc.log()
    assert "re-registered 5 live session(s) the registry had lost or ended" in proc.log()
