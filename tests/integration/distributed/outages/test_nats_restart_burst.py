"""nats-server restarted in the middle of a burst of 200 policy versions (REST on two replicas
and a raw NATS publisher): no event is lost or applied twice on either replica, the sessions
receive each version at most once and in order and end on the last one, the consumers recover
without a replica restart, and ``/readyz`` shows the outage (503 naming the policy feed)
and the recovery (200). REST publishes during the outage answer 503 ``nats_unavailable`` and
are retried by the caller; only accepted publishes are counted as sent."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import nats

from controlplane.edges.client import ControlClient, ServerPush
from tests.integration.distributed.conftest import Cluster, Replica, event
from tests.integration.distributed.harness import ready, stream_events
from tests.integration.service.conftest import ADMIN, eventually
from tests.support.servers import ServerProcess

STALL_S = 3.0
REST_VERSIONS = 70  # on each of two replicas
RAW_VERSIONS = 60  # straight to NATS
RESTART_AT = 90  # accepted publishes before nats-server is restarted
FIELDS = {"burst-a": "prompt", "burst-b": "agent_context", "burst-raw": "keyterms"}
WIRE = {"prompt": "prompt", "agent_context": "agent_context", "keyterms": "keyterms_prompt"}


@dataclass
class Burst:
    accepted: dict[str, list[int]] = field(default_factory=lambda: {p: [] for p in FIELDS})
    refusals: Counter[str] = field(default_factory=Counter)  # status/code of retried answers
    restart_due: asyncio.Event = field(default_factory=asyncio.Event)

    def count(self, policy_id: str, version: int) -> None:
        self.accepted[policy_id].append(version)
        if sum(len(v) for v in self.accepted.values()) >= RESTART_AT:
            self.restart_due.set()


def _value(policy_id: str, i: int) -> Any:
    text = f"{policy_id}-{i}"
    return [text] if FIELDS[policy_id] == "keyterms" else text


async def _rest(replica: Replica, policy_id: str, burst: Burst) -> None:
    i = 0
    while i < REST_VERSIONS:
        doc = {"id": policy_id, "set": {FIELDS[policy_id]: _value(policy_id, i)}}
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with replica.http.post(replica.base + "/v1/policies", json=doc,
                                     headers=headers) as resp:  # fmt: skip
            body = json.loads(await resp.text())
        if resp.status == 201:
            burst.count(policy_id, int(body["version"]))
            i += 1
            await asyncio.sleep(0.02)
        else:  # the caller retries the same content (a 503 may still have been stored)
            assert resp.status in (409, 503), (resp.status, body)
            burst.refusals[f"{resp.status} {body['error']['code']}"] += 1
            await asyncio.sleep(0.1)


async def _raw(cluster: Cluster, burst: Burst) -> None:
    async def quiet(exc: Exception) -> None:  # counted as refusals below, not logged
        return None

    nc = await nats.connect(cluster.nats_url, reconnect_time_wait=0.2, max_reconnect_attempts=-1,
                            error_cb=quiet)  # fmt: skip
    js = nc.jetstream(timeout=2)
    subject = f"{cluster.subject_prefix}.policy.burst-raw"
    try:
        version = 1
        while version <= RAW_VERSIONS:
            doc = event({"id": "burst-raw", "version": version,
                         "set": {"keyterms": _value("burst-raw", version)}})  # fmt: skip
            try:  # the same Nats-Msg-Id on a retry: stored once even if an ack was lost
                await js.publish(subject, json.dumps(doc).encode(),
                                 headers={"Nats-Msg-Id": f"burst-raw:{version}"})  # fmt: skip
            except Exception as exc:  # any NATS failure: retried
                burst.refusals[f"raw {type(exc).__name__}"] += 1
                await asyncio.sleep(0.1)
                continue
            burst.count("burst-raw", version)
            version += 1
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


async def _collect(client: ControlClient, into: list[ServerPush]) -> None:
    async for push in client.pushes():  # an app that applies every push at once
        into.append(push)
        await client.applied(push.version)


async def test_nats_restart_during_a_burst_loses_no_event_and_applies_none_twice(
    own_cluster: Cluster, own_nats: ServerProcess, caplog: Any
) -> None:
    caplog.set_level(logging.WARNING)
    a = await own_cluster.start("node-a", readiness_stall_s=STALL_S)
    b = await own_cluster.start("node-b", readiness_stall_s=STALL_S)
    clients = {
        r.settings.node_id: r.client(kind="streaming-v3", model="u3-rt-pro")  # type: ignore[union-attr]
        for r in (a, b)
    }
    received: dict[str, list[ServerPush]] = {node: [] for node in clients}
    for c in clients.values():
        await c.__aenter__()
    collectors = [asyncio.create_task(_collect(c, received[n])) for n, c in clients.items()]
    burst = Burst()
    outage: dict[str, dict[str, Any]] = {}

    async def restart() -> None:
        await burst.restart_due.wait()
        await asyncio.to_thread(own_nats.stop)
        for replica in (a, b):  # the outage shows on both (publishers keep trying meanwhile)

            async def down(r: Replica = replica) -> dict[str, Any] | None:
                ok, checks = await ready(r.http, r.base)  # (audit_shipping may fail first)
                return None if ok or checks["policy_feed"] else checks

            outage[str(replica.port)] = await eventually(down, timeout=STALL_S + 6)
        await asyncio.to_thread(own_nats.start)

    try:
        await asyncio.wait_for(
            asyncio.gather(_rest(a, "burst-a", burst), _rest(b, "burst-b", burst),
                           _raw(own_cluster, burst), restart()),
            timeout=120,
        )  # fmt: skip

        async def both_ready() -> bool:
            return all([(await ready(r.http, r.base))[0] for r in (a, b)])

        await eventually(both_ready, timeout=20)
        stream = [m.event for m in await stream_events(own_cluster.nats_url,
                                                       own_cluster.policy_stream)]  # fmt: skip
        stored: dict[str, list[int]] = {p: [] for p in FIELDS}
        for ev in stream:
            stored[ev["policy"]["id"]].append(ev["policy"]["version"])
        for policy_id, versions in stored.items():
            assert versions == sorted(set(versions)), f"{policy_id}: stored twice or out of order"
            assert set(burst.accepted[policy_id]) <= set(versions), f"{policy_id}: accepted, lost"
        assert sum(len(v) for v in burst.accepted.values()) == 2 * REST_VERSIONS + RAW_VERSIONS

        for replica in (a, b):  # every stored event applied exactly once on every replica

            async def caught_up(r: Replica = replica) -> bool:
                for policy_id, versions in stored.items():
                    body = await r.call("GET", f"/v1/policies/{policy_id}/versions", expect=200)
                    if [v["version"] for v in body["items"]] != versions:
                        return False
                return True

            await eventually(caught_up, timeout=20)
            applied = await replica.metric("controlplane_policy_events_total", result="applied")
            assert applied == len(stream)

        async def on_last() -> bool:  # the last versions of a burst are debounced: they
            # reach the sessions up to fanout_quiet_s / fanout_max_delay_s after the store
            for node, pushes in received.items():
                replica = a if node == "node-a" else b
                for policy_id, name in FIELDS.items():
                    doc = await replica.call("GET", f"/v1/policies/{policy_id}", expect=200)
                    seen = [p.message[WIRE[name]] for p in pushes if WIRE[name] in p.message]
                    if not seen or seen[-1] != doc["policy"]["set"][name]:
                        return False
            return True

        await eventually(on_last, timeout=10)
        # each session got every value at most once, in publishing order, ending on the last
        for node, pushes in received.items():
            for policy_id, name in FIELDS.items():
                wire = WIRE[name]
                seen = [json.dumps(p.message[wire]) for p in pushes if wire in p.message]
                assert len(seen) == len(set(seen)), f"{node} {policy_id}: a version pushed twice"
                order = [[json.dumps(_value(policy_id, i)) for i in range(REST_VERSIONS + 1)]
                         .index(v) for v in seen]  # fmt: skip
                assert order == sorted(order), f"{node} {policy_id}: pushed out of order"
                last = stored[policy_id][-1]
                replica = a if node == "node-a" else b
                doc = await replica.call("GET", f"/v1/policies/{policy_id}", expect=200)
                assert doc["version"] == last
                assert seen[-1] == json.dumps(doc["policy"]["set"][name]), f"{node}: not on last"
            # the session's version log holds one sent entry per frame, and verifies
            replica = a if node == "node-a" else b
            sid = clients[node].session_id
            entries = await replica.log(str(sid))
            sent = [e for e in entries if e["cause"] == "policy" and e["status"] == "sent"]
            assert [e["version"] for e in sent] == [p.version for p in pushes]
            verified = await replica.call("GET", f"/v1/audit/verify?session={sid}", expect=200)
            assert verified["ok"] is True
    finally:
        for task in collectors:
            task.cancel()
        await asyncio.gather(*collectors, return_exceptions=True)
        for c in clients.values():
            await c.close()

    for checks in outage.values():  # /readyz named the stalled policy feed during the outage
        assert checks["policy_feed"] is False
        assert "policy fetch" in checks["failing"]["policy_feed"]
    assert burst.refusals, "the burst never hit the outage"
    rest_codes = {k for k in burst.refusals if not k.startswith("raw ")}
    assert rest_codes <= {"503 nats_unavailable", "409 version_conflict"}, burst.refusals
    assert "Traceback" not in caplog.text and "ERROR" not in caplog.text
