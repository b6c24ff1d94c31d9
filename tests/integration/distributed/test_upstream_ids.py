"""Upstream ids across replicas: the Redis registry indexes them, so any replica finds a
session by the id its app knows, and routes the log request to the owner."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import websockets

from sessions.clock import FakeClock
from sessions.model import Session, SessionState
from sessions.redis_registry import RedisRegistry
from tests.integration.distributed.conftest import Cluster
from tests.integration.service.conftest import eventually
from tests.support.servers import ServerProcess


async def test_any_replica_finds_a_session_by_its_upstream_id(cluster: Cluster) -> None:
    a = await cluster.start("node-a")
    b = await cluster.start("node-b")
    headers = {"Authorization": "Bearer test-key"}
    async with websockets.connect(f"{b.ws_base}/labels/tenant=acme/v1/ws",
                                  additional_headers=headers) as ws:  # fmt: skip
        await ws.send(json.dumps({"type": "session.update", "session": {}}))
        ready = json.loads(await asyncio.wait_for(ws.recv(), 5))
        upstream_id = ready["session_id"]
        cp_id = b.live_by_upstream(upstream_id)

        async def found_on_a() -> dict[str, object] | None:
            body = await a.call("GET", f"/v1/sessions/{upstream_id}")
            return body if isinstance(body, dict) and body.get("id") == cp_id else None

        session = await eventually(found_on_a)  # once b's registry sync carried the id
        assert session["node"] == "node-b" and session["labels"] == {"tenant": "acme"}
        listed = await a.call("GET", f"/v1/sessions?upstream_id={upstream_id}", expect=200)
        assert [s["id"] for s in listed["items"]] == [cp_id]
        log = await a.call("GET", f"/v1/sessions/{upstream_id}/log", expect=200)
        assert log["items"][0]["session_id"] == cp_id  # served by the owner, node-b


async def test_a_token_minted_on_one_replica_carries_its_keys_labels_on_another(
    cluster: Cluster, tmp_path: Path
) -> None:
    table = tmp_path / "credential-labels"
    table.write_text(f"{hashlib.sha256(b'acme-key').hexdigest()} tenant=acme\n")
    a = await cluster.start("node-a", credential_labels_file=table)
    b = await cluster.start("node-b", credential_labels_file=table)
    url = f"{a.base}/v3/token?expires_in_seconds=60"
    async with a.http.get(url, headers={"Authorization": "acme-key"}) as resp:
        assert resp.status == 200, await resp.text()
        token = (await resp.json())["token"]
    connect = f"{b.ws_base}/v3/ws?sample_rate=16000&token={token}"
    async with websockets.connect(connect) as ws:  # the JS SDK's way: ?token=, no header
        begin = json.loads(await asyncio.wait_for(ws.recv(), 5))
        session = await b.session(b.live_by_upstream(begin["id"]))
        assert session["labels"] == {"tenant": "acme"}  # learnt on node-a, honoured on node-b


async def test_the_upstream_index_names_a_calls_latest_session_whatever_updates_come_late(
    own_redis: ServerProcess,
) -> None:
    """A Voice Agent call resumed on replica B (a new session with the same upstream id) while
    replica A still holds its earlier session (A has not seen the client leave yet, or A's
    writes waited behind a Redis outage): A's later updates of that session must not point
    the index back at it, nor an update of it after it ended (real Redis, two registries)."""
    clock = FakeClock()
    a = RedisRegistry(own_redis.url, clock, ttl_s=30, prefix="up:")
    b = RedisRegistry(own_redis.url, clock, ttl_s=30, prefix="up:")
    try:
        first = _session("s1", "node-a")
        await a.register(first)
        first.upstream_id = "call-1"  # session.ready
        await a.update(first)
        assert await b.find_upstream("call-1") == "s1"
        resumed = _session("s2", "node-b")
        await b.register(resumed)
        resumed.upstream_id = "call-1"  # the resume's session.ready
        await b.update(resumed)
        assert await a.find_upstream("call-1") == "s2"
        first.acked_version = 2  # A's session changes once more (a push answered)
        await a.update(first)
        assert await b.find_upstream("call-1") == "s2"
        await a.update_many([first])
        assert await b.find_upstream("call-1") == "s2"
        await a.end("s1", cause="client_closed", at=5.0)
        other = RedisRegistry(own_redis.url, clock, ttl_s=30, prefix="up:")
        try:  # (a registry that never wrote s1's entry: an update of the ended s1 is skipped)
            assert await other.update_many([first]) == ["s1"]
            assert await b.find_upstream("call-1") == "s2"
        finally:
            await other.close()
    finally:
        await a.close()
        await b.close()


def _session(sid: str, node: str) -> Session:
    return Session(id=sid, kind="voice-agent-v1", model="voice-agent", labels={}, node=node,
                   client_config={}, effective_config={}, provenance={}, applied=(),
                   desired_version=1, sent_version=1, acked_version=1,
                   state=SessionState.SYNCED, created_at=1.0, updated_at=1.0)  # fmt: skip
