"""Upstream ids across replicas: the Redis registry indexes them, so any replica finds a
session by the id its app knows, and routes the log request to the owner."""

from __future__ import annotations

import asyncio
import json

import websockets

from tests.integration.distributed.conftest import Cluster
from tests.integration.service.conftest import eventually


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
