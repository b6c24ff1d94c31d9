"""redis-server SIGSTOPped (silent: its sockets open, nothing answers, its data kept) while
Voice Agent calls move from replica A to replica B, then resumed (SIGCONT).

While Redis is stopped a version is published: A pushes it to its calls (their registry
updates wait on Redis), then the calls' clients leave A and resume through B, which cannot
claim their ids (its commands time out) and refuses each resume before dialling; the clients
retry. Once Redis answers again every call resumes on B and runs the newest version; every
push ends in one recorded state; only B's sessions are listed live; the upstream id of each
call names B's session on every replica (A's writes that waited on Redis land after B's and
must not point it back at A's ended session); each replica's entries reach ``CP_AUDIT``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from tests.integration.distributed.conftest import Cluster
from tests.integration.distributed.test_faults import all_shipped, bounded, listed, open_agent
from tests.integration.distributed.test_redis_restart_moving import TERMINAL, _resume, _upstream
from tests.integration.service.conftest import eventually
from tests.support.servers import ServerProcess

CALLS = 12


@pytest.mark.timeout(180)
async def test_redis_stopped_while_calls_move_between_replicas(
    redis_cluster: Cluster, own_redis: ServerProcess
) -> None:
    cluster = redis_cluster
    a, b = await cluster.start("node-a"), await cluster.start("node-b")
    assert a.service is not None and b.service is not None
    await a.publish({"id": "tone", "set": {"system_prompt": "v1"}})
    await eventually(lambda: b.service is not None and b.service.store.latest("tone"))
    first = {"type": "session.update", "session": {}}
    calls = await bounded([open_agent(a.ws_base, first) for _ in range(CALLS)])
    ids = {c.upstream_id for c in calls}
    on_a = set(a.service.engine.live)

    assert own_redis.proc is not None
    os.kill(own_redis.proc.pid, signal.SIGSTOP)
    clients = []
    try:
        await a.publish({"id": "tone", "set": {"system_prompt": "v2"}})  # (NATS, not Redis)

        async def v2_upstream() -> bool:
            for c in calls:
                config = (await cluster.emulator.session(c.upstream_id))["config"]
                if config["system_prompt"] != "v2":
                    return False
            return True

        await eventually(v2_upstream, timeout=15)  # A pushed it; its registry writes wait
        for c in calls:
            await c.close()
        await eventually(lambda: not a.service.engine.live, timeout=15)  # type: ignore[union-attr]
        await eventually(lambda: _suspended(cluster, ids), timeout=15)
        deadline = time.monotonic() + 90
        moving = asyncio.gather(*(_resume(b.ws_base, c.upstream_id, deadline) for c in calls))
        await asyncio.sleep(3.0)  # resumes refused meanwhile
        assert not moving.done(), "a resume went through with Redis stopped"
    finally:
        os.kill(own_redis.proc.pid, signal.SIGCONT)
    moved = await moving
    clients = [client for client, _ in moved]
    try:
        refusals = [r for _, tried in moved for r in tried]
        for error, close in refusals:
            assert error["type"] == "session.error", error
            assert error["message"].startswith("not connected:"), error
            assert close is not None and close.code == 1011, close
        engine = b.service.engine

        def converged() -> bool:
            assert len(engine.live) == CALLS
            for ls in engine.live.values():
                p = ls.push
                assert p.in_flight is None and p.sent_version == p.desired_version
            return True

        await eventually(converged, timeout=20)
        for c in clients:
            config = (await cluster.emulator.session(c.upstream_id))["config"]
            assert config["system_prompt"] == "v2", config
        for replica, sids in ((a, on_a), (b, set(engine.live))):
            for sid in sids:
                entries = await replica.log(sid)
                ends: dict[int, list[str]] = {}
                for e in entries:
                    if e["status"] in TERMINAL:
                        ends.setdefault(e["version"], []).append(e["status"])
                sent = {e["version"] for e in entries if e["status"] == "sent"}
                assert sent <= set(ends) and all(len(s) == 1 for s in ends.values()), entries

        by_upstream = {ls.session.upstream_id: sid for sid, ls in engine.live.items()}
        assert set(by_upstream) == ids

        async def registry_right() -> bool:
            for replica in (a, b):
                live = await listed(replica)
                assert set(live) == set(engine.live), (len(live), len(engine.live))
            for up, sid in by_upstream.items():  # A holds none of them: the registry answers
                found = await a.call("GET", f"/v1/sessions/{up}", expect=200)
                assert found["id"] == sid, (up, found["id"], sid, found.get("state"))
            return True

        await eventually(registry_right, timeout=20)
        await all_shipped(cluster, [(a, "node-a"), (b, "node-b")])
    finally:
        for c in clients:
            await c.close()


async def _suspended(cluster: Cluster, ids: set[str]) -> bool:
    return await _upstream(cluster, "suspended") >= ids
