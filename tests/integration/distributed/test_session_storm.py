"""A reconnect storm onto one Redis-backed replica (issue #19 item 3): 300 Voice Agent gateway
sessions and 300 control-channel sessions start at once on one ``controlplane serve`` process,
as a dead replica's clients do on a survivor. Before: redis-py's asyncio pool (100
connections) raised "Too many connections" instead of waiting, and 299 of 300 gateway clients
were closed 1011, 200 of 300 registrations refused. Now the pool waits (bounded by
``redis_pool_timeout_s``) and every session starts, is listed live, owned by the replica.

``STORM_SESSIONS`` sets the total (default 600, half of each kind).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest

from controlplane.edges.client import ControlClient
from tests.integration.distributed.conftest import Cluster
from tests.integration.distributed.harness import Spawned, spawn
from tests.integration.service.conftest import ADMIN
from tests.integration.service.fleet import App, Fleet

TOTAL = int(os.environ.get("STORM_SESSIONS", "600"))


@pytest.mark.timeout(120)
async def test_six_hundred_concurrent_session_starts_on_one_redis_backed_replica_all_start(
    cluster: Cluster,
) -> None:
    env = {"CONTROLPLANE_REDIS_POOL_SIZE": "20"}  # far fewer connections than sessions
    proc: Spawned = await asyncio.to_thread(spawn, cluster, "node-s", env=env)
    ws_base = proc.base.replace("http://", "ws://")
    fleet = Fleet(ws_base)
    try:
        half = TOTAL // 2
        started = time.monotonic()
        results: list[Any] = await asyncio.gather(
            *(fleet.agent("storm=gateway") for _ in range(half)),
            *(_app(fleet, ws_base) for _ in range(TOTAL - half)),
            return_exceptions=True,
        )
        took = time.monotonic() - started
        failures = [r for r in results if isinstance(r, BaseException)]
        assert not failures, (len(failures), repr(failures[:3]), proc.log()[-3000:])
        assert len(fleet.agents) == half
        assert len(fleet.apps) == TOTAL - half
        listed = await _live_ids(cluster, proc.base)
        assert len(listed) == TOTAL
        assert {a.session_id for a in fleet.apps} <= listed
        assert "Too many connections" not in proc.log()
        print(f"\n{TOTAL} concurrent session starts on one replica (Redis pool of 20): "
              f"all started and listed live in {took:.1f}s")  # fmt: skip
    finally:
        await fleet.close()
        proc.stop()


async def _app(fleet: Fleet, ws_base: str) -> None:
    client = ControlClient(ws_base + "/v1/control", token=ADMIN, kind="voice-agent-v1",
                           model="voice-agent", labels={"storm": "control"})  # fmt: skip
    await client.__aenter__()
    fleet.apps.append(App(client, "silent"))


async def _live_ids(cluster: Cluster, base: str) -> set[str]:
    ids: set[str] = set()
    cursor = None
    while True:
        url = base + "/v1/sessions?limit=1000" + (f"&cursor={cursor}" if cursor else "")
        async with cluster.http.get(url, headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        ids |= {item["id"] for item in body["items"] if item["state"] != "ended"}
        cursor = body["next"]
        if not cursor:
            return ids
