"""Issue 8 across replicas: the guard's ratio is cluster-wide, and a halt decided on one
replica (a ``policy.halted`` event on ``CP_POLICY``) stops pushes on every replica."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.integration.distributed.conftest import Cluster, Replica
from tests.integration.service.conftest import eventually
from tests.integration.service.fleet import Fleet

HALTS = "controlplane_rollout_halts_total"


async def test_a_halt_decided_on_one_replica_stops_pushes_on_the_other(cluster: Cluster) -> None:
    a = await cluster.start("node-a")
    b = await cluster.start("node-b")
    on_a, on_b = Fleet(a.ws_base), Fleet(b.ws_base)
    labels = {"group": "g"}
    v1 = {"system_prompt": "v1"}
    doc = {"id": "tone", "match": {"labels": labels}}
    try:
        await a.publish({**doc, "set": v1})

        async def b_has_v1() -> bool:
            return bool((await b.call("GET", "/v1/policies/tone", expect=200))["version"] == 1)

        await eventually(b_has_v1)
        # 30 sessions per replica: fewer than the 50 the guard needs on either one alone
        await on_a.open_apps(28, "ack", labels=labels, config=v1)
        holders = await on_a.open_apps(2, "hold", labels=labels)  # v1 pushed, unanswered
        held = [await h.next_push(5) for h in holders]
        assert all(p is not None for p in held)
        await on_b.open_apps(28, "ack", labels=labels, config=v1)
        await on_b.open_apps(2, "fail", labels=labels, config=v1)

        await a.publish({**doc, "set": {"system_prompt": "v2"}})

        async def halted(replica: Replica) -> dict[str, Any] | None:
            body = await replica.call("GET", "/v1/policies/tone/rollout", expect=200)
            return dict(body) if body["state"] == "halted" else None

        body_b = await eventually(lambda: halted(b), timeout=10)
        body_a = await eventually(lambda: halted(a), timeout=10)
        for body in (body_a, body_b):
            halt = body["halt"]
            assert (halt["version"], halt["decided_by"], halt["failed"]) == (2, "node-b", 2)
            assert halt["targeted"] == 60  # both replicas' sessions
        assert await b.metric(HALTS, policy="tone") == 1
        assert await a.metric(HALTS, policy="tone") == 0

        # the event on the stream, deduplicated per version
        nc = await cluster.nats()
        try:
            js = nc.jetstream()
            subject = f"{cluster.subject_prefix}.policy.tone"
            msg = await js.get_last_msg(cluster.policy_stream, subject)
            assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == "tone:2:halted"
            event = json.loads(msg.data)
            assert (event["type"], event["cause"], event["policy"]["version"]) == (
                "policy.halted", "guard", 2
            )  # fmt: skip
        finally:
            await nc.close()

        # replica A's sessions not yet pushed never get v2, nor does a late joiner on A
        for holder, push in zip(holders, held, strict=True):
            assert push is not None
            await holder.client.applied(push.version)
        late = await on_a.app("hold", labels=labels)
        assert late.client.effective_config == v1
        await asyncio.sleep(0.5)
        for holder in holders:
            assert holder.pushes.empty()
            assert (await a.session(holder.session_id))["effective_config"] == v1

        # a new version ends the halt on both replicas
        await b.publish({**doc, "set": {"system_prompt": "v3"}})

        async def active_everywhere() -> bool:
            bodies = [await r.call("GET", "/v1/policies/tone/rollout", expect=200)
                      for r in (a, b)]  # fmt: skip
            return all(x["version"] == 3 and x["state"] == "active" for x in bodies)

        await eventually(active_everywhere)
        push = await holders[0].next_push(5)
        assert push is not None and push.message["session"] == {"system_prompt": "v3"}
    finally:
        await on_a.close()
        await on_b.close()
