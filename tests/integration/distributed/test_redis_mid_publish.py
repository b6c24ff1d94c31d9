"""redis-server killed (SIGKILL) in the middle of a publish whose fan-out runs on two replicas,
each holding sessions, then restarted empty on the same port (no persistence: a failover to
a replica that had not caught up looks the same to us).

Pushes never wait for Redis: every app on both replicas gets the version published as Redis
dies and the one published while it is down. Once Redis is back each replica writes its live
sessions back, so either replica lists all of them with their current versions, and nobody
ends them as lost a TTL later; every entry is in ``CP_AUDIT`` as written locally.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from tests.integration.distributed.conftest import TTL_S, Cluster, Replica
from tests.integration.distributed.test_faults import all_shipped, listed
from tests.integration.service.conftest import eventually
from tests.integration.service.fleet import Fleet
from tests.support.servers import ServerProcess

APPS = 30  # per replica


@pytest.mark.timeout(120)
async def test_redis_killed_mid_publish_with_sessions_on_two_replicas(
    redis_cluster: Cluster, own_redis: ServerProcess
) -> None:
    cluster = redis_cluster
    a, b = await cluster.start("node-a"), await cluster.start("node-b")
    on_a, on_b = Fleet(a.ws_base), Fleet(b.ws_base)
    try:
        apps = await on_a.open_apps(APPS, "ack") + await on_b.open_apps(APPS, "ack")
        ids = {app.session_id for app in apps}
        await eventually(lambda: _all_listed(a, ids), timeout=10)

        assert own_redis.proc is not None
        publishing = asyncio.create_task(a.publish({"id": "tone", "set": {"system_prompt": "v1"}}))
        os.kill(own_redis.proc.pid, signal.SIGKILL)  # while the publish fans out
        await publishing
        own_redis.proc.wait(timeout=10)
        got = await asyncio.gather(*(app.version_of_prompt("v1", 10) for app in apps))
        assert all(got), got.count(None)
        await b.publish({"id": "tone", "set": {"system_prompt": "v2"}})  # Redis still down
        got = await asyncio.gather(*(app.version_of_prompt("v2", 10) for app in apps))
        assert all(got), got.count(None)

        await asyncio.to_thread(own_redis.start)  # same port, no data

        async def current() -> bool:
            for replica in (a, b):
                records = await listed(replica)
                assert set(records) == ids, len(records)
                for app, version in zip(apps, got, strict=True):
                    record = records[app.session_id]
                    assert record["versions"]["acked"] == version, record
                    assert record["state"] == "synced", record
            return True

        await eventually(current, timeout=15)
        await asyncio.sleep(TTL_S * 1.5)  # and nobody ended them as lost
        assert set(await listed(b)) == ids

        await all_shipped(cluster, [(a, "node-a"), (b, "node-b")])
    finally:
        await on_a.close()
        await on_b.close()


async def _all_listed(replica: Replica, ids: set[str]) -> bool:
    return set(await listed(replica)) == ids
