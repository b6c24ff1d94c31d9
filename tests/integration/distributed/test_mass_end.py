"""Clients of one Redis-backed replica disconnecting together: every session ends in Redis.

Before: each session's end was its own WATCH transaction holding a pooled connection for
four round trips, so a thousand clients leaving at once waited for the pool one end at a
time; with a small pool most ends failed "No connection available" and were left to the
engine's slow one-by-one retry. Now the replica's ends share a transaction per batch
(``sessions/redis_ends.py``): all of them land at once on a pool of 2, none retried, in
fewer than 50 MULTI/EXECs (Redis's own counter, the replica's syncs included: 4-5 measured,
1,401 before). The count is what fails without the batching on a quiet machine, where a
thousand transactions may still fit in the pool timeout.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.asyncio import Redis

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
    # rollout counts are a MULTI/EXEC per interval (0.2 s in this cluster): not during the test
    a = await cluster.start("node-a", redis_pool_size=2, redis_pool_timeout_s=2.0,
                            rollout_sync_interval_s=300.0)  # fmt: skip
    registry = RedisRegistry(cluster.redis_url, SystemClock(), prefix=f"t{cluster.uid}:")
    probe = Redis.from_url(cluster.redis_url)
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
        before = await _exec_calls(probe)
        await asyncio.gather(*(app.client.close() for app in apps))  # all leave at once

        async def none_live() -> bool:
            return not (await registry.list(limit=10)).items

        await eventually(none_live, timeout=60)
        transactions = await _exec_calls(probe) - before
        assert transactions < N // 20, transactions  # batches, not one per end
        ended = [await registry.get(sid) for sid in ids]
        assert all(s.state is SessionState.ENDED for s in ended)
        assert {s.end_cause for s in ended} == {"control_closed"}, {s.end_cause for s in ended}
        assert [await registry.owner(sid) for sid in ids] == [None] * N
        failed = [r.getMessage() for r in caplog.records if "registry" in r.getMessage()]
        assert not failed, failed[:3]  # no end waited for the retry (nor failed an update)
    finally:
        await fleet.close()
        await registry.close()
        await probe.aclose()


@pytest.mark.timeout(120)
async def test_a_replica_shutting_down_with_a_thousand_sessions_ends_them_all_in_redis(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The drain closes every socket still open after the grace (1012): their ends all land
    before the registry closes, none left to the node-lost sweep of another replica."""
    a = await cluster.start("node-a", redis_pool_size=2, redis_pool_timeout_s=2.0)
    registry = RedisRegistry(cluster.redis_url, SystemClock(), prefix=f"t{cluster.uid}:")
    fleet = Fleet(a.ws_base)
    try:
        apps = []
        for _ in range(N // 100):
            apps += await fleet.open_apps(100, "silent", labels={"wave": "shutdown"})
        ids = sorted(str(app.session_id) for app in apps)
        assert len((await registry.list(limit=N + 1)).items) == N

        caplog.set_level(logging.WARNING, logger="controlplane")
        await a.stop()  # drain (grace 0.2 s), close the rest, then the registry
        assert (await registry.list(limit=10)).items == []
        ended = [await registry.get(sid) for sid in ids]
        assert {(s.state, s.end_cause) for s in ended} == {(SessionState.ENDED,
                                                            "control_closed")}  # fmt: skip
        assert [await registry.owner(sid) for sid in ids] == [None] * N
        failed = [r.getMessage() for r in caplog.records if "registry" in r.getMessage()]
        assert not failed, failed[:3]
    finally:
        await fleet.close()
        await registry.close()


async def _exec_calls(probe: Redis) -> int:
    stats = await probe.info("commandstats")
    return int(stats.get("cmdstat_exec", {}).get("calls", 0))
