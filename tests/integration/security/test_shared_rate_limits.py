"""Expensive-read limits shared by every replica through Redis (docs/security.md#rate-limits):
a token spread over two replicas gets one bucket, not two (it got N buckets on N replicas),
taken atomically (reads racing on both replicas never both spend the last read); Redis learns
nothing derived from the token it could present. While Redis does not answer, each replica
limits on its own (the limit per replica), says so once, counts it, and shares again once
Redis answers. Real Redis, real replicas."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

import pytest
from redis.asyncio import Redis

from controlplane.api.limits import RETRY_SHARED_S, ReadLimits
from controlplane.errors import TooManyRequests
from sessions.clock import FakeClock
from sessions.redis_rates import RedisBuckets
from tests.integration.distributed.conftest import Cluster, cluster  # noqa: F401
from tests.support.servers import redis_server

TOKENS = {"tok-viewer": "viewer", "tok-viewer-2": "viewer", "tok-admin": "admin"}
EXPENSIVE = "/v1/sessions?state=ended"  # a filtered list: the registry's index is walked


async def _status(replica: Any, token: str) -> int:
    async with replica.http.get(replica.base + EXPENSIVE,
                                headers={"Authorization": f"Bearer {token}"}) as resp:  # fmt: skip
        await resp.read()
        return int(resp.status)


async def test_replicas_share_one_bucket_per_token_taken_atomically(
    cluster: Cluster,  # noqa: F811
) -> None:
    limits = {"tokens": TOKENS, "expensive_read_burst": 4, "expensive_read_rate_per_s": 0.01}
    a = await cluster.start("node-a", **limits)
    b = await cluster.start("node-b", **limits)
    # one after the other, alternating replicas: 4 reads in all, then 429 on both
    statuses = [await _status(a if i % 2 else b, "tok-viewer") for i in range(8)]
    assert statuses == [200] * 4 + [429] * 4
    # racing: 16 reads at once on both replicas, exactly the burst passes
    raced = await asyncio.gather(*(_status(r, "tok-viewer-2") for r in (a, b) * 8))
    assert sorted(raced) == [200] * 4 + [429] * 12
    # another token is not slowed down; Redis holds no digest of a token
    assert await _status(a, "tok-admin") == 200
    redis = Redis.from_url(cluster.redis_url)
    try:
        names = [k.decode() for k in await redis.keys(f"t{cluster.uid}:rate:*")]
    finally:
        await redis.aclose()
    assert len(names) == 3, names
    for token in TOKENS:
        digest = hashlib.sha256(token.encode()).hexdigest()
        assert not any(digest[:6] in name or digest[-6:] in name for name in names)


async def test_without_redis_each_replica_limits_on_its_own_says_so_and_shares_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    local: list[int] = []
    refused: list[str] = []
    with redis_server() as server:
        buckets = RedisBuckets(server.url, prefix="rl:")
        limits = ReadLimits(clock, burst=2, rate_per_s=0.01, shared=buckets,
                            counted=refused.append, fallback=lambda: local.append(1))  # fmt: skip
        digest = hashlib.sha256(b"tok").digest()
        try:
            await limits.take(digest, "session_log")
            await limits.take(digest, "session_log")
            with pytest.raises(TooManyRequests):
                await limits.take(digest, "session_log")
            assert (local, refused) == ([], ["session_log"])

            server.stop(kill=True)
            with caplog.at_level(logging.WARNING, logger="controlplane.api.limits"):
                await limits.take(digest, "session_log")  # this replica's own bucket: full
                await limits.take(digest, "session_log")
                with pytest.raises(TooManyRequests):  # limited, never unlimited
                    await limits.take(digest, "session_log")
                clock.advance(RETRY_SHARED_S + 0.1)  # asks Redis again: still down, local
                with pytest.raises(TooManyRequests):
                    await limits.take(digest, "session_log")
            said = [r.getMessage() for r in caplog.records if "Redis" in r.getMessage()]
            assert len(said) == 1 and "per replica" in said[0], said  # once per outage
            assert len(local) == 4

            server.restart()
            clock.advance(RETRY_SHARED_S + 0.1)
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="controlplane.api.limits"):
                await limits.take(digest, "session_log")  # Redis again (its bucket restarted)
            assert len(local) == 4
            assert any("limits shared" in r.getMessage() for r in caplog.records)
        finally:
            await buckets.close()
