"""Issue 21 across replicas: progressive waves advance as ``policy.wave`` events on
``CP_POLICY`` (one per step, whichever replica decided it), so every replica resolves the
same wave; a pause on one replica holds on the other; a replica started later replays the
steps from the stream."""

from __future__ import annotations

import json
from typing import Any

from tests.integration.distributed.conftest import Cluster, Replica
from tests.integration.service.conftest import eventually
from tests.integration.service.fleet import App, Fleet
from tests.integration.service.test_waves import LABELS, V1, got_v2, ids_by_wave, v2

POLICY = V1["id"]


async def waves(replica: Replica) -> dict[str, Any]:
    body = await replica.call("GET", f"/v1/policies/{POLICY}/rollout", expect=200)
    return dict(body["waves"] or {})


async def test_waves_advance_once_for_the_whole_cluster(cluster: Cluster) -> None:
    a = await cluster.start("node-a")
    b = await cluster.start("node-b")
    on_a, on_b = Fleet(a.ws_base), Fleet(b.ws_base)
    try:
        await a.publish(V1)

        async def b_has_v1() -> bool:
            return bool((await b.call("GET", f"/v1/policies/{POLICY}", expect=200))["version"])

        await eventually(b_has_v1)
        groups: list[list[App]] = [[], [], []]
        for wave, ids in enumerate(ids_by_wave(2)):
            for fleet, sid in zip((on_a, on_b), ids, strict=True):
                app = await fleet.app("ack", labels=LABELS, session_id=sid)
                first = await app.next_push(5)
                assert first is not None and first.message["session"] == {"system_prompt": "v1"}
                groups[wave].append(app)

        await a.publish(v2(60.0))
        for app in groups[0]:  # the first wave on both replicas
            assert await got_v2(app, 5)
        for app in groups[1] + groups[2]:
            assert app.pushes.empty()

        # a pause decided on B holds on A; a promote on A reaches B's sessions of wave 2
        await b.call("POST", f"/v1/policies/{POLICY}/pause", expect=200)
        await eventually(lambda: _is(a, paused=True))
        await a.call("POST", f"/v1/policies/{POLICY}/promote", expect=200)
        for app in groups[1]:
            assert await got_v2(app, 5)
        for app in groups[2]:
            assert app.pushes.empty()

        # resume on B (the interval is 60 s: nothing advances by itself), promote on B
        await b.call("POST", f"/v1/policies/{POLICY}/resume", expect=200)
        await b.call("POST", f"/v1/policies/{POLICY}/promote", expect=200)
        for app in groups[2]:
            assert await got_v2(app, 5)
        for replica in (a, b):
            body = await eventually(lambda r=replica: _is(r, state="complete"))
            assert [s["action"] for s in body["steps"]] == ["pause", "promote", "resume",
                                                            "promote"]  # fmt: skip

        nc = await cluster.nats()
        try:
            msg = await nc.jetstream().get_last_msg(
                cluster.policy_stream, f"{cluster.subject_prefix}.policy.{POLICY}"
            )
            assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == "wv:2:wave:4"
            event = json.loads(msg.data)
            assert (event["type"], event["cause"], event["wave"]["action"]) == (
                "policy.wave", "wave", "promote"
            )  # fmt: skip
        finally:
            await nc.close()

        # a replica started now replays the steps from the stream
        c = await cluster.start("node-c")
        body = await eventually(lambda: _is(c, state="complete"), timeout=10)
        assert body["index"] == 2 and len(body["steps"]) == 4
    finally:
        await on_a.close()
        await on_b.close()


async def test_automatic_advances_are_published_once_by_the_cluster(cluster: Cluster) -> None:
    a = await cluster.start("node-a")
    b = await cluster.start("node-b")
    await a.publish(V1)
    await a.publish(v2(0.5))
    for replica in (a, b):
        body = await eventually(lambda r=replica: _is(r, state="complete"), timeout=10)
        # both replicas decided each advance; the stream kept one event per step
        assert [(s["seq"], s["index"]) for s in body["steps"]] == [(1, 1), (2, 2)]


async def _is(replica: Replica, **want: Any) -> dict[str, Any] | None:
    body = await waves(replica)
    return body if all(body.get(k) == v for k, v in want.items()) else None
