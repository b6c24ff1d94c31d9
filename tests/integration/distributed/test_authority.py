"""Ownership and lock ceilings across replicas (issue #18): the publisher's role rides in the
policy event, so a replica that did not take the publish knows who owns the policy."""

from __future__ import annotations

from tests.integration.distributed.conftest import Cluster, Replica, event
from tests.integration.service.conftest import eventually

LOCK = {"id": "eu-disclosure", "match": {"labels": {"region": "eu"}},
        "set": {"prompt": "Recorded."}, "lock": ["prompt"]}  # fmt: skip
PITCH = {"id": "upsell", "priority": 1_000_000, "experiment": {"key": "upsell", "variants": [
    {"name": "pitch", "weight": 100, "set": {"prompt": "Buy."}}]}}  # fmt: skip


async def test_another_replica_refuses_an_experimenter_on_a_compliance_policy(
    cluster: Cluster,
) -> None:
    a = await cluster.start("node-a")
    b = await cluster.start("node-b")
    await a.publish(LOCK, token="tok-compliance")

    async def b_knows() -> bool:
        body = await b.call("GET", "/v1/policies/eu-disclosure")
        return isinstance(body, dict) and body.get("owner_role") == "compliance"

    await eventually(b_knows)
    hijack = {"id": "eu-disclosure", "experiment": PITCH["experiment"]}
    body = await b.call("POST", "/v1/policies", body=hijack, token="tok-experimenter",
                        expect=403)  # fmt: skip
    assert body["error"]["code"] == "policy_owned"
    body = await b.call("POST", "/v1/policies", body=PITCH, token="tok-experimenter", expect=409)
    assert body["error"]["code"] == "field_locked"
    assert body["error"]["details"]["policy"] == "eu-disclosure"

    # straight to the stream, as a tool would, claiming the experimenter role: every replica
    # ignores it (the owner is compliance) and the lock stays
    raw = event({"id": "eu-disclosure", "version": 2, "set": {"prompt": "gone"}})
    await cluster.publish_raw("eu-disclosure", {**raw, "role": "experimenter"},
                              msg_id="eu-disclosure:2")  # fmt: skip
    for replica in (a, b):

        async def ignored(replica: Replica = replica) -> bool:
            name = "controlplane_policy_events_total"
            return await replica.metric(name, type="policy.published", result="ignored") >= 1

        await eventually(ignored)
        policy = await replica.call("GET", "/v1/policies/eu-disclosure", expect=200)
        assert policy["version"] == 1 and policy["policy"]["lock"] == ["prompt"]
