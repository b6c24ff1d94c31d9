"""``/readyz`` reflects a policy consumer that is not keeping up (issue #19 item 1): events
pending in the replica's consumer after every fetch for ``readiness_lag_s`` turn ``policy_feed``
false, naming how many are pending, and it is true again once the consumer caught up. Before,
only a loop that made no progress at all was seen: a replica crawling through a burst said 200.
"""

from __future__ import annotations

import asyncio
import json

import nats

from controlplane.intake.bus import PolicyEvent
from tests.integration.distributed.conftest import Cluster, event
from tests.integration.distributed.harness import ready
from tests.integration.service.conftest import eventually

EVENTS = 150
HANDLER_S = 0.04  # a slow handler of ours: 150 events take ~6 s


async def test_a_consumer_that_stays_behind_makes_readyz_503_until_it_catches_up(
    cluster: Cluster,
) -> None:
    a = await cluster.start("node-a", readiness_stall_s=3.0, readiness_lag_s=1.0)
    assert a.service is not None
    handled: list[str] = []
    # The first event is fetched alone and its handler waits until the whole backlog is
    # stored; otherwise the first fetch could collect much of the burst while it is being
    # published (each message's num_pending then near 0) and the backlog left after it be
    # handled faster than readiness_lag_s: no lag to see (failed that way in a CI run).
    gated = asyncio.Event()
    go = asyncio.Event()

    async def slow(ev: PolicyEvent) -> None:
        gated.set()
        await go.wait()
        await asyncio.sleep(HANDLER_S)
        handled.append(ev.policy_id)

    a.service.bus.subscribe(slow)
    nc = await nats.connect(cluster.nats_url)
    try:
        js = nc.jetstream()

        async def one(i: int) -> None:
            body = json.dumps(event({"id": f"lag{i}", "version": 1, "set": {}})).encode()
            await js.publish(f"{cluster.subject_prefix}.policy.lag{i}", body, timeout=20)

        await one(0)
        await asyncio.wait_for(gated.wait(), 10)
        await asyncio.gather(*(one(i) for i in range(1, EVENTS)))
    finally:
        await nc.close()
        go.set()

    async def unready() -> dict[str, object] | None:  # behind (not "handler busy" while gated)
        ok, checks = await ready(a.http, a.base)
        reason = str(checks.get("failing", {}).get("policy_feed", ""))
        return None if ok or not reason.startswith("policy consumer not keeping") else checks

    checks = await eventually(unready, timeout=10)
    reason = checks["failing"]["policy_feed"]  # type: ignore[index]
    assert reason.startswith("policy consumer not keeping up: "), reason
    assert 0 < checks["policy_events_pending"] < EVENTS  # type: ignore[operator]
    assert len(handled) < EVENTS
    await eventually(lambda: len(handled) == EVENTS, timeout=20)
    ok, checks = await ready(a.http, a.base)
    assert ok, checks
    assert checks["policy_events_pending"] == 0
