"""Upstream ids across replicas: the Redis registry indexes them, so any replica finds a
session by the id its app knows, and routes the log request to the owner."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

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
