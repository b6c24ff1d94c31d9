"""The shared work of one publish (Redis commands, NATS messages) depends on the replicas, not
on the sessions (issue #23; measured at scale by ``loadtest/bench_cluster.py``).

Three replicas on this test's own NATS and Redis, control-channel sessions split among them,
every push answered ``applied``. The replicas' timers that also talk to Redis and NATS
(heartbeats, rollout counts) are set far apart so that, between two snapshots, only the
publish's own work is counted: ``INFO commandstats`` of Redis, and every NATS message seen by a
wiretap subscription on ``>``. The same publish is measured with 20 and with 60 sessions.

Nothing may grow with the sessions. Every targeted session gets two audit entries here
(``sent``, then ``acked``; DESIGN §7), but ``CP_AUDIT`` holds them as batches: one message per
shipping pass and replica (docs/audit.md, ``controlplane.audit.batches``), each a JetStream
publish and its acknowledgement; shipping entry by entry (one message per entry, the stream
contract before issue #23) made 40 vs 120 audit messages here. The policy consumers' long polls
(a pull request every 2 s per replica) run on a timer and are left out. No assertion on times.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg
from redis.asyncio import Redis

from tests.integration.distributed.conftest import Cluster, Replica
from tests.integration.service.conftest import eventually
from tests.support.servers import ServerProcess

QUIET = {"heartbeat_interval_s": 300.0, "session_ttl_s": 600.0, "rollout_sync_interval_s": 300.0}
LABELS = {"cost": "shared"}
SLACK = 15  # a sync tick between a push and its ack costs one more batch on a replica
PASSES = 2  # shipping passes per publish and replica: the sent entries, then the acks' tail


class Wiretap:
    """Every NATS message, counted: audit entries, audit checkpoints, everything else."""

    def __init__(self, prefix: str) -> None:
        self.audit = f"{prefix}.audit."
        self.counts: Counter[str] = Counter()

    async def on_message(self, msg: Msg) -> None:
        status = (msg.headers or {}).get("Status")
        if msg.subject.startswith("$JS.API.CONSUMER.MSG.NEXT.") or status is not None:
            self.counts["pull"] += 1  # the policy consumers' long polls: on a timer
        elif msg.subject.startswith(self.audit + "_checkpoint."):
            self.counts["checkpoint"] += 1
        elif msg.subject.startswith(self.audit):
            self.counts["audit"] += 1
        else:
            self.counts["other"] += 1


async def _commands(redis: Redis) -> Counter[str]:
    stats = await redis.info("commandstats")
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})


@contextlib.asynccontextmanager
async def _session(replica: Replica, received: Counter[int]) -> AsyncIterator[None]:
    async with replica.client(labels=LABELS) as app:

        async def answer() -> None:
            async for push in app.pushes():
                await app.applied(push.version)
                received[int(push.message.get("session", {}).get("system_prompt", "v0")[1:])] += 1

        task = asyncio.get_running_loop().create_task(answer())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def _settled(redis: Redis, tap: Wiretap) -> tuple[Counter[str], Counter[str]]:
    """Counters once nothing changed for a while (engine sync 250 ms, audit shipping 0.1 s)."""
    last: tuple[Counter[str], Counter[str]] | None = None

    async def still() -> tuple[Counter[str], Counter[str]] | None:
        nonlocal last
        now = (await _commands(redis), Counter(tap.counts))
        now[0]["info"] = 0
        now[1]["pull"] = 0
        if last is not None and now == last:
            return now
        last = now
        await asyncio.sleep(0.7)
        return None

    found: tuple[Counter[str], Counter[str]] = await eventually(still, timeout=30)
    return found


@pytest.mark.timeout(120)
async def test_redis_commands_and_nats_messages_per_publish_do_not_grow_with_sessions(
    own_cluster: Cluster, own_nats: ServerProcess, own_redis: ServerProcess
) -> None:
    replicas = [await own_cluster.start(f"node-{i}", **QUIET) for i in range(3)]
    redis = Redis.from_url(own_redis.url)
    nc = await nats.connect(own_nats.url)
    tap = Wiretap(own_cluster.subject_prefix)
    await nc.subscribe(">", cb=tap.on_message)
    received: Counter[int] = Counter()
    cost: dict[int, dict[str, Any]] = {}
    version = 0
    try:
        async with contextlib.AsyncExitStack() as stack:
            opened = 0
            for total in (20, 60):
                while opened < total:
                    await stack.enter_async_context(_session(replicas[opened % 3], received))
                    opened += 1
                # twice: the first version also reaches the sessions opened just now
                for _ in range(2):
                    version += 1
                    before = await _settled(redis, tap)
                    doc = {"id": "shared-cost", "match": {"labels": LABELS},
                           "set": {"system_prompt": f"v{version}"}}  # fmt: skip
                    await replicas[0].publish(doc)
                    await eventually(lambda v=version, n=total: received[v] == n, timeout=20)
                    after = await _settled(redis, tap)
                redis_delta, nats_delta = after[0] - before[0], after[1] - before[1]
                cost[total] = {"redis": redis_delta, "nats": nats_delta,
                               "redis_total": sum(redis_delta.values())}  # fmt: skip
    finally:
        await nc.close()
        await redis.aclose()

    low, high = cost[20], cost[60]
    # the audit trail: a few batch messages per replica and publish, whatever the sessions
    # (2 entries per session were 40 and 120 messages when every entry was its own message)
    for kind in ("audit", "checkpoint"):
        counts = (low["nats"][kind], high["nats"][kind])
        assert all(n <= PASSES * len(replicas) for n in counts), (kind, cost)
        assert abs(counts[1] - counts[0]) <= len(replicas), (kind, cost)
    assert low["nats"]["audit"] >= 1 and high["nats"]["audit"] >= len(replicas), cost
    # every other message, less the PubAck of each audit message (entries and checkpoints):
    # the policy event, its lookups, deliveries and acks; the same for 20 and 60 sessions
    rest_low, rest_high = (
        c["nats"]["other"] - c["nats"]["audit"] - c["nats"]["checkpoint"] for c in (low, high)
    )
    assert abs(rest_high - rest_low) <= SLACK, cost
    # Redis: no command per session (a SET per session per push was 40 more here); the audit
    # claim fence is one MGET per shipping pass and replica
    assert abs(high["redis_total"] - low["redis_total"]) <= SLACK, cost
    assert high["redis"]["mget"] <= PASSES * len(replicas), cost
