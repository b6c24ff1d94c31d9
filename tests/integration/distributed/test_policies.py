"""Policy events through JetStream: every replica applies every event, exactly once."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import websockets

from tests.integration.distributed.conftest import Cluster, event
from tests.integration.service.conftest import eventually


async def _recv_type(ws: Any, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if msg.get("type") == kind:
            return dict(msg)


async def test_policies_from_rest_and_from_nats_reach_sessions_on_both_replicas(
    cluster: Cluster,
) -> None:
    a = await cluster.start("node-a")
    b = await cluster.start("node-b")
    labels = {"tenant": "acme"}
    async with (
        a.client(labels=labels) as on_a,
        b.client(labels=labels) as on_b,
        websockets.connect(
            b.ws_base + "/v1/ws",
            additional_headers={"Authorization": "Bearer test-key", "X-Session-Labels":
                                "tenant=acme"},
        ) as gw,
    ):  # fmt: skip
        await gw.send(json.dumps({"type": "session.update",
                                  "session": {"system_prompt": "Be kind."}}))  # fmt: skip
        upstream_id = (await _recv_type(gw, "session.ready"))["session_id"]
        pushes_a, pushes_b = on_a.pushes(), on_b.pushes()

        # 1. POST /v1/policies on replica A
        published = await a.publish({"id": "acme-terms", "match": {"labels": {"tenant": "acme"}},
                                     "set": {"keyterms": ["Acme", "OrderPro"]}})  # fmt: skip
        assert published["version"] == 1
        want = {"type": "session.update", "session": {"input": {"keyterms": ["Acme", "OrderPro"]}}}
        for pushes, app in ((pushes_a, on_a), (pushes_b, on_b)):
            push = await asyncio.wait_for(anext(pushes), 5)
            assert push.message == want
            await app.applied(push.version)

        async def gateway_updated() -> list[Any]:
            return await cluster.emulator.updates(upstream_id, "session.update")

        updates = await eventually(gateway_updated)
        assert updates[-1] == want

        # 2. straight to NATS, as another tool would
        ack = await cluster.publish_raw(
            "tone",
            event(
                {
                    "id": "tone",
                    "version": 1,
                    "match": {"kind": ["voice-agent-v1"]},
                    "set": {"system_prompt": "Be concise."},
                }
            ),
            msg_id="tone:1",
        )
        assert ack.duplicate is None
        for pushes, app in ((pushes_a, on_a), (pushes_b, on_b)):
            push = await asyncio.wait_for(anext(pushes), 5)
            assert push.message == {"type": "session.update",
                                    "session": {"system_prompt": "Be concise."}}  # fmt: skip
            await app.applied(push.version)

        async def gateway_tone() -> bool:
            found = await cluster.emulator.updates(upstream_id, "session.update")
            return bool(found[-1] == {"type": "session.update",
                                      "session": {"system_prompt": "Be concise."}})  # fmt: skip

        await eventually(gateway_tone)

        # both replicas know both policies, and count every session in the rollout
        for replica in (a, b):
            ids = [p["id"] for p in (await replica.call("GET", "/v1/policies", expect=200))[
                "items"]]  # fmt: skip
            assert sorted(ids) == ["acme-terms", "tone"]

            async def counted(replica: Any = replica) -> dict[str, Any] | None:
                body = await replica.call("GET", "/v1/policies/tone/rollout", expect=200)
                totals = body["totals"]
                return body if totals["targeted"] == 3 and totals["acknowledged"] == 3 else None

            body = await eventually(counted)
            assert body["versions"][0]["version"] == 1

            listed = await replica.call("GET", "/v1/sessions", expect=200)
            nodes = sorted(s["node"] for s in listed["items"])
            assert nodes == ["node-a", "node-b", "node-b"]


async def test_duplicate_event_and_older_version_push_nothing_more(cluster: Cluster) -> None:
    a = await cluster.start("node-a")
    async with a.client() as app:
        pushes = app.pushes()
        v2 = event({"id": "dup", "version": 2, "set": {"system_prompt": "v2"}})
        first = await cluster.publish_raw("dup", v2, msg_id="dup:2")
        again = await cluster.publish_raw("dup", v2, msg_id="dup:2")
        assert again.duplicate is True and again.seq == first.seq
        push = await asyncio.wait_for(anext(pushes), 5)
        assert push.message["session"] == {"system_prompt": "v2"}
        await app.applied(push.version)
        # the same version again without the header (the stream cannot dedupe it) and an older
        # version after the newer one: both are stored, neither is applied
        await cluster.publish_raw("dup", v2)
        await cluster.publish_raw(
            "dup", event({"id": "dup", "version": 1, "set": {"system_prompt": "v1"}}), "dup:1"
        )

        async def ignored() -> bool:
            return await a.metric("controlplane_policy_events_total", result="ignored") == 2

        await eventually(ignored)
        try:
            extra = await asyncio.wait_for(anext(pushes), 0.5)
        except TimeoutError:
            extra = None
        assert extra is None
        policy = await a.call("GET", "/v1/policies/dup", expect=200)
        assert policy["version"] == 2


async def test_malformed_events_are_refused_with_a_reason_and_the_consumer_goes_on(
    cluster: Cluster, caplog: Any
) -> None:
    caplog.set_level(logging.WARNING, logger="controlplane")
    a = await cluster.start("node-a")
    async with a.client() as app:
        pushes = app.pushes()
        await cluster.publish_raw("bad", b"{not json", msg_id="bad:x")
        await cluster.publish_raw("bad", {"type": "policy.exploded", "policy": {}})
        await cluster.publish_raw(
            "bad", event({"id": "bad", "version": 1, "set": {"keyterms": ["x" * 60]}})
        )
        await cluster.publish_raw("bad", event({"id": "other", "version": 1, "set": {}}))
        await cluster.publish_raw(
            "good", event({"id": "good", "version": 1, "set": {"system_prompt": "ok"}})
        )
        push = await asyncio.wait_for(anext(pushes), 5)
        assert push.message["session"] == {"system_prompt": "ok"}

        assert await a.metric("controlplane_policy_events_total", result="invalid") == 4
        assert await a.metric(
            "controlplane_policy_events_total", type="unknown", result="invalid"
        ) == 2  # fmt: skip
        text = caplog.text
        assert "not JSON" in text
        assert "type must be one of policy.published, policy.retired, policy.halted" in text
        assert "keyterms" in text
        assert "does not match subject" in text
        assert [p["id"] for p in (await a.call("GET", "/v1/policies"))["items"]] == ["good"]
        # every event acked (after its handler), none redelivered
        bus = a.service.bus

        async def settled() -> Any:
            info = await bus._sub.consumer_info()  # type: ignore[attr-defined]
            return info if info.num_ack_pending == 0 else None

        info = await eventually(settled)
        assert info.num_redelivered == 0 and info.delivered.stream_seq == 5
        assert info.name.startswith("cp-node-a-")


async def test_publish_conflicts_use_the_stream_not_the_local_store(cluster: Cluster) -> None:
    a = await cluster.start("node-a")
    b = await cluster.start("node-b")
    await a.publish({"id": "race", "set": {"prompt": "one"}})
    # B answers 409 for a version the stream already holds, even before it applied it
    conflict = await b.call("POST", "/v1/policies", body={"id": "race", "version": 1,
                            "set": {"prompt": "x"}}, expect=409)  # fmt: skip
    assert conflict["error"]["details"]["current"] == 1
    second = await b.publish({"id": "race", "set": {"prompt": "two"}})
    assert second["version"] == 2
    # read-your-writes: the replica that answered has applied it
    assert (await b.call("GET", "/v1/policies/race", expect=200))["version"] == 2

    async def a_has_it() -> bool:
        return bool((await a.call("GET", "/v1/policies/race"))["version"] == 2)

    await eventually(a_has_it)
