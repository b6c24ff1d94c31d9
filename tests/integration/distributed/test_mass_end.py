"""Clients of one Redis-backed replica disconnecting together: every session ends in Redis.

Before: each session's end was its own WATCH transaction holding a pooled connection for
four round trips, so a thousand clients leaving at once waited for the pool one end at a
time; with a small pool most ends failed "No connection available" and were left to the
engine's slow one-by-one retry. Now the replica's ends share a transaction per batch
(``sessions/redis_ends.py``): all of them land at once on a pool of 2, none retried.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from sessions.clock import SystemClock
from sessions.model import SessionState
from sessions.redis_registry import RedisRegistry
from tests.integration.distributed.conftest import Cluster
from tests.integration.service.conftest import eventually
from tests.integration.service.fleet import Fleet

N = 1000


@pytest.mark.timeout(120)
async def test_a_thousand_clients_leaving_at_once_all_end_in_redis(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    a = await cluster.start("node-a", redis_pool_size=2, redis_pool_timeout_s=0.5)
    registry = RedisRegistry(cluster.redis_url, SystemClock(), prefix=f"t{cluster.uid}:")
    fleet = Fleet(a.ws_base)
    try:
        apps = []
        for _ in range(N // 100):  # opened in tens of hundreds: the open is not under test
            apps += await fleet.open_apps(100, "silent", labels={"wave": "bye"})
        ids = sorted(str(app.session_id) for app in apps)
        assert len(set(ids)) == N
        live = await registry.list(limit=N + 1)
        assert sorted(s.id for s in live.items) == ids

        caplog.set_level(logging.WARNING, logger="controlplane")
        await asyncio.gather(*(app.client.close() for app in apps))  # all leave at once

        async def none_live() -> bool:
            return not (await registry.list(limit=10)).items

        await eventually(none_live, timeout=60)
        ended = [await registry.get(sid) for sid in ids]
        assert all(s.state is SessionState.ENDED for s in ended)
        assert {s.end_cause for s in ended} == {"control_closed"}, {s.end_cause for s in ended}
        assert [await registry.owner(sid) for sid in ids] == [None] * N
        failed = [r.getMessage() for r in caplog.records if "registry" in r.getMessage()]
        assert not failed, failed[:3]  # no end waited for the retry (nor failed an update)
    finally:
        await fleet.close()
        await registry.close()
