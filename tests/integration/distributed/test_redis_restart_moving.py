"""redis-server SIGKILLed while Voice Agent calls move from one replica to another, then
restarted empty on the same port (a failover to a replica that had not caught up looks the
same to us).

The calls' clients leave replica A and resume their upstream sessions through replica B
(``session.resume``) while Redis is down: B cannot claim a session id, so it refuses each
resume before dialling (close 1011, no upstream leg taken from the suspended call) and the
clients retry; once Redis is back every call resumes on B and runs the version published
while Redis was down. Every push ends in one recorded state; each replica's local entries
reach ``CP_AUDIT`` as written; only B's sessions are listed live, on both replicas.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

import pytest
import websockets

from tests.integration.distributed.conftest import TTL_S, Cluster
from tests.integration.distributed.test_faults import (
    AGENT_KEY,
    GatewayClient,
    all_shipped,
    bounded,
    listed,
    open_agent,
)
from tests.integration.service.conftest import eventually
from tests.support.servers import ServerProcess

CALLS = 12
TERMINAL = ("acked", "rejected", "unverified", "skipped")


async def _resume(base: str, upstream_id: str, deadline: float) -> tuple[GatewayClient, list[Any]]:
    """Resume the call through ``base`` until it works: the client, and each refusal (the
    ``session.error`` and close) of the tries before."""
    refusals: list[Any] = []
    while True:
        ws = await websockets.connect(base + "/v1/ws", additional_headers=AGENT_KEY)
        await ws.send(json.dumps({"type": "session.resume", "session_id": upstream_id}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if reply["type"] == "session.ready":
            assert reply["session_id"] == upstream_id
            return GatewayClient("agent", ws, upstream_id).start(), refusals
        try:
            await asyncio.wait_for(ws.recv(), 10)
        except websockets.ConnectionClosed as closed:
            refusals.append((reply, closed.rcvd))
        assert time.monotonic() < deadline, refusals[-3:]
        await asyncio.sleep(0.3)


async def _upstream(cluster: Cluster, state: str) -> set[str]:
    emulator = cluster.emulator
    url = f"{emulator.base}/_emulator/sessions?kind=voice-agent-v1&state={state}"
    async with emulator.http.get(url) as resp:
        return {s["id"] for s in (await resp.json())["items"]}


@pytest.mark.timeout(180)
async def test_redis_restarted_empty_while_calls_move_between_replicas(
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
    for c in calls:
        assert (await cluster.emulator.session(c.upstream_id))["config"]["system_prompt"] == "v1"
    on_a = set(a.service.engine.live)

    assert own_redis.proc is not None
    os.kill(own_redis.proc.pid, signal.SIGKILL)
    own_redis.proc.wait(timeout=10)
    for c in calls:  # the clients leave A (its registry ends wait for Redis)
        await c.close()
    await eventually(lambda: not a.service.engine.live, timeout=10)  # type: ignore[union-attr]
    await b.publish({"id": "tone", "set": {"system_prompt": "v2"}})  # Redis still down
    await eventually(lambda: _upstream_suspended(cluster, ids), timeout=15)

    deadline = time.monotonic() + 60
    moving = asyncio.gather(*(_resume(b.ws_base, c.upstream_id, deadline) for c in calls))
    await asyncio.sleep(1.5)  # resumes refused meanwhile: B cannot claim their ids
    assert await _upstream(cluster, "suspended") >= ids, "a refused resume took the call"
    await asyncio.to_thread(own_redis.start)  # same port, no data
    moved = await moving
    refusals = [r for _, tried in moved for r in tried]
    assert len(refusals) >= CALLS  # each was refused while Redis was down, and told why
    for error, close in refusals:
        assert error["type"] == "session.error", error
        assert error["message"].startswith("not connected: registering the session"), error
        assert close is not None and close.code == 1011, close
    clients = [client for client, _ in moved]
    try:
        engine = b.service.engine

        def converged() -> bool:
            assert len(engine.live) == CALLS
            for ls in engine.live.values():
                p = ls.push
                assert p.in_flight is None and p.sent_version == p.desired_version
            return True

        await eventually(converged, timeout=15)
        for c in clients:  # the upstream runs the version published while Redis was down
            config = (await cluster.emulator.session(c.upstream_id))["config"]
            assert config["system_prompt"] == "v2", config
        for sid in engine.live:
            entries = await b.log(sid)
            ends: dict[int, list[str]] = {}
            for e in entries:
                if e["status"] in TERMINAL:
                    ends.setdefault(e["version"], []).append(e["status"])
            sent = {e["version"] for e in entries if e["status"] == "sent"}
            assert sent <= set(ends) and all(len(s) == 1 for s in ends.values()), entries
            assert entries[0]["wire"]["first_message"]["type"] == "session.resume"

        async def registry_right() -> bool:
            for replica in (a, b):
                live = await listed(replica)
                assert set(live) == set(engine.live), (len(live), len(engine.live))
                assert not set(live) & on_a
            return True

        await eventually(registry_right, timeout=15)
        await asyncio.sleep(TTL_S * 1.5)  # and nobody ends B's sessions as lost
        assert set(await listed(a)) == set(engine.live)

        await all_shipped(cluster, [(a, "node-a"), (b, "node-b")])
    finally:
        for c in clients:
            await c.close()


async def _upstream_suspended(cluster: Cluster, ids: set[str]) -> bool:
    return await _upstream(cluster, "suspended") >= ids
