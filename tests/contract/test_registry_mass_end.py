"""Many sessions ending at once (clients disconnecting together, a replica shutting down).

Before: ``RedisRegistry.end`` was one WATCH/MULTI/EXEC per session, each holding a pooled
connection for four round trips; 3,000 concurrent ends on a pool of 4 (1 s pool timeout)
failed 2,873 times with "No connection available". Now concurrent ends share one transaction
per batch (``sessions/redis_ends.py``) and concurrent single ``update`` calls one write: the
same storm on a pool of 2 lands every end, and no late update brings an ended session back.
"""

from __future__ import annotations

import asyncio
import uuid

from redis.asyncio import Redis

from sessions.clock import FakeClock
from sessions.errors import UnknownSession
from sessions.model import SessionState
from sessions.redis_registry import RedisRegistry
from tests.contract.test_registry_contract import Backend, backend, session

__all__ = ["backend"]  # the parametrized fixture (memory and redis), re-exported for pytest

N = 2000


async def _exec_calls(probe: Redis) -> int:
    stats = await probe.info("commandstats")
    return int(stats.get("cmdstat_exec", {}).get("calls", 0))


async def test_two_thousand_ends_at_once_on_a_pool_of_two_all_land(redis_url: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    reg = RedisRegistry(redis_url, FakeClock(), prefix=prefix, pool_size=2, pool_timeout_s=0.5)
    probe = Redis.from_url(redis_url)
    ids = [f"bye-{i:05}" for i in range(N)]
    try:
        assert await reg.register_many(session(i) for i in ids) == []
        updated = [session(i) for i in ids[::2]]  # half have a record newer than registered
        for s in updated:
            s.acked_version = 7
        assert await reg.update_many(updated) == []
        before = await _exec_calls(probe)
        results = await asyncio.gather(
            *(reg.update(updated[k]) for k in range(100)),  # like the detach's last update
            *(reg.end(sid, cause="client_closed", at=5000.0 + k) for k, sid in enumerate(ids)),
            reg.end(ids[3], cause="duplicate", at=9999.0),  # the same id twice in the storm
            reg.end("never-registered", cause="client_closed", at=1.0),
            return_exceptions=True,
        )
        transactions = await _exec_calls(probe) - before
        # an update racing the end of its session lands first or is refused: no other error
        assert all(r is None or isinstance(r, UnknownSession) for r in results[:100])
        errors = [r for r in results[100:] if isinstance(r, BaseException)]
        assert len(errors) == 1 and isinstance(errors[0], UnknownSession), errors[:3]
        assert transactions <= 2 * (N // 500 + 2), transactions  # batches, not one per end

        ends = results[100 : 100 + N]
        for k, (sid, ended) in enumerate(zip(ids, ends, strict=True)):
            assert not isinstance(ended, BaseException)
            assert (ended.id, ended.state, ended.end_cause) == (sid, SessionState.ENDED,
                                                                "client_closed")  # fmt: skip
            assert ended.ended_at == 5000.0 + k
            assert ended.acked_version == (7 if k % 2 == 0 else 0)  # the newest record ended
        duplicate = results[100 + N]
        assert not isinstance(duplicate, BaseException)
        assert duplicate == ends[3] and duplicate is not ends[3]  # first end wins, a copy

        # every end is in Redis: nothing live, no owner, no record, no node membership
        assert (await reg.list(limit=1000)).items == []
        raw = await probe.hmget(f"{prefix}sessions:owner", ids)
        assert raw == [None] * N
        assert await probe.hlen(f"{prefix}sessions:records") == 0
        assert await probe.scard(f"{prefix}node:node-a:sessions") == 0
        assert await probe.zcard(f"{prefix}sessions:live") == 0
        assert await probe.zcard(f"{prefix}sessions:ended") == N
        assert (await reg.get(ids[-1])).end_cause == "client_closed"

        # a late sync of every session (the engine's update_many) resurrects nothing
        assert sorted(await reg.update_many(session(i) for i in ids)) == ids
        late = await asyncio.gather(*(reg.update(session(i)) for i in ids[:50]),
                                    return_exceptions=True)  # fmt: skip
        assert all(isinstance(r, UnknownSession) for r in late), late[:3]
        assert (await reg.list(limit=1000)).items == []
        assert await probe.hlen(f"{prefix}sessions:records") == 0
        assert (await reg.get(ids[0])).state is SessionState.ENDED
    finally:
        await reg.close()
        await probe.aclose()


async def test_concurrent_ends_of_one_id_end_it_once_and_agree(backend: Backend) -> None:
    reg = backend.registry
    await reg.register(session("s1"))
    await reg.register(session("s2"))
    first, second, other = await asyncio.gather(
        reg.end("s1", cause="client_closed", at=2000.0),
        reg.end("s1", cause="shutdown", at=3000.0),
        reg.end("s2", cause="shutdown", at=2500.0),
    )
    assert (first.end_cause, first.ended_at) == ("client_closed", 2000.0)
    assert second == first and second is not first
    second.labels["tenant"] = "mutated"
    assert (await reg.get("s1")).labels["tenant"] == "acme"
    assert (other.end_cause, other.ended_at) == ("shutdown", 2500.0)
    assert (await reg.list(limit=10)).items == []


async def test_concurrent_updates_each_land_and_an_ended_one_is_refused(backend: Backend) -> None:
    reg = backend.registry
    ids = [f"u{i}" for i in range(300)]
    for sid in ids:
        await reg.register(session(sid))
    await reg.end("u5", cause="client_closed", at=2000.0)
    changed = [session(sid) for sid in ids]
    for k, s in enumerate(changed):
        s.desired_version = k + 2
    results = await asyncio.gather(*(reg.update(s) for s in changed), return_exceptions=True)
    assert [i for i, r in enumerate(results) if r is not None] == [5]
    assert isinstance(results[5], UnknownSession)
    assert (await reg.get("u7")).desired_version == 9
    assert (await reg.get("u299")).desired_version == 301
    assert (await reg.get("u5")).state is SessionState.ENDED
