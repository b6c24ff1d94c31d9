"""Cluster-wide session identity (issue #17 case 6): a session id is claimed once across
replicas, and one session's durable trail (``cp.audit.<id>``) has one writer.

Real ``nats-server -js`` and ``redis-server``, two replicas in this event loop, the emulator
as upstream for the gateway session.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from typing import Any

import pytest
import redis.asyncio as aioredis
import websockets

from controlplane import cli
from controlplane.edges.client import ControlError
from tests.integration.distributed.conftest import Cluster, Replica
from tests.integration.service.conftest import ADMIN, eventually

STREAMING = "/v3/ws?sample_rate=16000&speech_model=universal-3-5-pro"


def _verify(cluster: Cluster, *ids: str) -> tuple[int, list[dict[str, Any]]]:
    """``controlplane audit verify --nats-url … --json [ID…]``: exit code and reports."""
    args = ["audit", "verify", *ids, "--json", "--nats-url", cluster.nats_url,
            "--nats-audit-stream", cluster.audit_stream,
            "--nats-subject-prefix", cluster.subject_prefix]  # fmt: skip
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(args)
    return code, list(json.loads(out.getvalue())["items"])


async def _refused(replica: Replica, session_id: str) -> ControlError:
    with pytest.raises(ControlError) as info:
        async with replica.client(session_id=session_id):
            pass
    return info.value


async def _shipped(replica: Replica, session_id: str) -> None:
    local = await replica.log(session_id)

    async def done() -> bool:
        return await replica.metric("controlplane_audit_shipped_total") >= len(local)

    await eventually(done, timeout=10)


async def test_a_session_id_is_claimed_once_across_replicas(cluster: Cluster) -> None:
    a = await cluster.start("node-a")
    b = await cluster.start("node-b")
    await a.publish({"id": "greeting", "set": {"system_prompt": "v1"}})
    async with a.client(session_id="call-1") as first:
        push = await asyncio.wait_for(anext(first.pushes()), 5)
        await first.applied(push.version)
        # the same id on the other replica: an error frame with a stable code, then 1008
        async with websockets.connect(
            b.ws_base + "/v1/control", additional_headers={"Authorization": f"Bearer {ADMIN}"}
        ) as raw:
            register = {"type": "register", "session_id": "call-1",
                        "kind": "voice-agent-v1", "model": "voice-agent"}  # fmt: skip
            await raw.send(json.dumps(register))
            frame = json.loads(await asyncio.wait_for(raw.recv(), 5))
            assert frame["type"] == "error" and frame["code"] == "session_exists", frame
            assert "node-a" in frame["message"]
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(raw.recv(), 5)
            assert raw.close_code == 1008
        assert (await _refused(a, "call-1")).code == "session_exists"  # and on its own node
        assert "call-1" not in b.service.engine.live
        record = await b.session("call-1")
        assert (record["node"], record["state"]) == ("node-a", "synced")
    # ended: node-a keeps the trail, so node-b still may not take the id; node-a may
    await eventually(lambda: "call-1" not in a.service.engine.live)
    assert (await _refused(b, "call-1")).code == "session_exists"
    async with a.client(session_id="call-1") as again:
        assert again.session_id == "call-1"
    await _shipped(a, "call-1")
    code, reports = await asyncio.to_thread(_verify, cluster, "call-1")
    assert code == 0 and [r["ok"] for r in reports] == [True], reports
    assert reports[0]["count"] == len(await a.log("call-1"))


async def test_gateway_sessions_are_claimed_by_their_replica(cluster: Cluster) -> None:
    b = await cluster.start("node-b")
    async with websockets.connect(
        b.ws_base + STREAMING, additional_headers={"Authorization": "test-key"}
    ) as ws:
        begin = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert begin["type"] == "Begin"
        [sid] = list(b.service.engine.live)
        r = aioredis.Redis.from_url(cluster.redis_url)
        try:
            assert await r.get(f"t{cluster.uid}:claim:{sid}") == b"node-b"
            assert await r.pttl(f"t{cluster.uid}:claim:{sid}") > 300 * 86_400_000
        finally:
            await r.aclose()


async def test_a_lost_claim_never_gives_the_trail_a_second_writer(cluster: Cluster) -> None:
    """Redis loses the claim of a live id: the other replica is refused by the trail itself
    (it has entries); and if it did get the claim, the first replica's shipper is fenced."""
    a = await cluster.start("node-a")
    b = await cluster.start("node-b")
    r = aioredis.Redis.from_url(cluster.redis_url)
    prefix = f"t{cluster.uid}:"
    try:
        async with a.client(session_id="call-2") as on_a:
            await _shipped(a, "call-2")
            await r.delete(prefix + "claim:call-2")
            await r.hdel(prefix + "sessions:owner", "call-2")
            refused = await _refused(b, "call-2")
            assert refused.code == "session_exists" and "trail" in str(refused), refused
            # the claim moves to node-b anyway (what a race with a flushed Redis could do):
            # node-a's later entries are withheld, so the trail keeps one chain
            await r.set(prefix + "claim:call-2", "node-b")
            await a.publish({"id": "greeting", "set": {"system_prompt": "v2"}})
            push = await asyncio.wait_for(anext(on_a.pushes()), 5)
            await on_a.applied(push.version)

            async def fenced() -> bool:
                return await a.metric("controlplane_audit_fenced_total") >= 2  # sent + acked

            await eventually(fenced, timeout=10)
            shipped = await a.metric("controlplane_audit_shipped_total")
        local = await a.log("call-2")
        assert len(local) >= 3
        code, reports = await asyncio.to_thread(_verify, cluster, "call-2")
        assert code == 0 and [r["ok"] for r in reports] == [True], reports
        assert reports[0]["count"] < len(local)  # the withheld entries stay local only
        assert await a.metric("controlplane_audit_shipped_total") == shipped
    finally:
        await r.aclose()
