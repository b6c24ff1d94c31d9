"""Closing the Redis registry while session ends are still queued (a replica shutting down).

Before: ``RedisRegistry.close`` cancelled the group commit's batch being written and every
end queued behind it, silently: the sessions stayed live in Redis (owned by a node that had
stopped) until another replica's node-lost sweep, and nothing said so. Now close writes what is
queued for a bounded time and logs, by id, the ends it could not write (``sessions/
group_commit.py``: ``close(drain_s)``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid

import pytest
from redis.asyncio import Redis

from sessions.clock import FakeClock
from sessions.group_commit import GroupClosed
from sessions.model import SessionState
from sessions.redis_registry import RedisRegistry
from tests.contract.test_registry_contract import session
from tests.integration.distributed.conftest import Cluster
from tests.integration.service.conftest import eventually
from tests.integration.service.fleet import Fleet
from tests.support.servers import ServerProcess

N = 1500  # three batches of ends


async def test_ends_queued_at_close_are_written_before_the_registry_closes(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    reg = RedisRegistry(redis_url, FakeClock(), prefix=prefix, pool_size=2)
    ids = [f"close-{i:05}" for i in range(N)]
    check = RedisRegistry(redis_url, FakeClock(), prefix=prefix)
    try:
        assert await reg.register_many(session(i) for i in ids) == []
        caplog.set_level(logging.WARNING)
        ends = [asyncio.create_task(reg.end(sid, cause="shutdown", at=10.0)) for sid in ids]
        await asyncio.sleep(0)  # every end queued, the first batch being written
        await reg.close()
        results = await asyncio.gather(*ends, return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert (await check.list(limit=10)).items == []
        ended = [await check.get(sid) for sid in (ids[0], ids[700], ids[-1])]
        assert {(s.state, s.end_cause) for s in ended} == {(SessionState.ENDED, "shutdown")}
        assert not [r.getMessage() for r in caplog.records if "not written" in r.getMessage()]
    finally:
        await check.close()


@pytest.mark.timeout(60)
async def test_close_against_a_hung_redis_is_bounded_and_names_the_ends_not_written(
    own_redis: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    reg = RedisRegistry(own_redis.url, FakeClock(), pool_size=2)
    ids = [f"hung-{i:03}" for i in range(30)]
    assert own_redis.proc is not None
    pid = own_redis.proc.pid
    try:
        assert await reg.register_many(session(i) for i in ids) == []
        caplog.set_level(logging.WARNING)
        os.kill(pid, signal.SIGSTOP)  # Redis stops answering (no error, no reset)
        ends = [asyncio.create_task(reg.end(sid, cause="shutdown", at=10.0)) for sid in ids]
        await asyncio.sleep(0.05)
        began = time.monotonic()
        await reg.close(drain_s=0.5)
        assert time.monotonic() - began < 5.0  # bounded, not waiting for the server
        results = await asyncio.gather(*ends, return_exceptions=True)
        assert all(isinstance(r, GroupClosed) for r in results), results[:3]
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "30 session end(s) not written" in errors[0], errors
        assert all(sid in errors[0] for sid in ids[:20]) and " ..." in errors[0]
    finally:
        os.kill(pid, signal.SIGCONT)
    probe = Redis.from_url(own_redis.url)
    try:  # nothing was written: still live, for the node-lost sweep of another replica
        assert await probe.zcard("cp:sessions:live") == len(ids)
    finally:
        await probe.aclose()


@pytest.mark.timeout(90)
async def test_a_replica_stopping_while_redis_is_down_names_the_ends_it_could_not_write(
    redis_cluster: Cluster, own_redis: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """Sessions that ended during a Redis outage wait in the engine's retry queue; a replica
    stopping before Redis is back used to drop them without a word."""
    a = await redis_cluster.start("node-a")
    fleet = Fleet(a.ws_base)
    try:
        apps = await fleet.open_apps(25, "silent", labels={"wave": "outage"})
        ids = sorted(str(app.session_id) for app in apps)
        await asyncio.to_thread(own_redis.stop)
        for app in apps:
            await app.client.close()
        await eventually(lambda: not a.service.engine.live, timeout=20)
        caplog.set_level(logging.WARNING)
        await a.stop()
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        named = [e for e in errors if "25 session end(s) could not be written" in e]
        assert len(named) == 1, errors
        assert all(sid in named[0] for sid in ids[:20]) and " ..." in named[0]
    finally:
        await fleet.close()


@pytest.mark.timeout(60)
async def test_a_stopped_replica_leaves_no_connection_to_redis(
    redis_cluster: Cluster, own_redis: ServerProcess
) -> None:
    """The audit shipper's last pass (on stop, after the log's last flush) asks the claim fence,
    which reads the registry: the registry used to be closed before it, so that read opened
    a new connection on the closed client that nothing closed (a leaked socket per replica
    stop, seen as 'unclosed Connection' warnings at the end of the test run)."""
    probe = Redis.from_url(own_redis.url)
    try:
        a = await redis_cluster.start("node-a")
        async with a.client(labels={"wave": "stop"}) as app:
            assert app.session_id is not None
        await a.stop()

        me = str(await probe.client_id())

        async def others() -> int:
            return sum(1 for c in await probe.client_list() if c["id"] != me)

        left = await others()
        deadline = time.monotonic() + 5
        while left and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            left = await others()
        assert left == 0, [(c["name"], c["cmd"], c["age"]) for c in await probe.client_list()]
    finally:
        await probe.aclose()
