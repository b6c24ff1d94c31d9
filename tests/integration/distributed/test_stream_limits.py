"""An operator caps ``CP_AUDIT``'s size (``max_bytes``, to bound the NATS disk) and the audit
outgrows it (real NATS JetStream).

With discard-old, JetStream makes room by deleting the oldest messages: the sessions' first
entries (their anchors) and the oldest batches vanished from the durable trail without a
word, ``/readyz`` stayed 200. The streams are discard-new now: a full stream refuses the new
lines, the shipper keeps them on the replica's disk (its cursor does not move), ``/readyz``
says shipping is failing, and nothing already stored is lost; once the cap is raised the
backlog ships and the stream holds every entry once.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from tests.integration.distributed.conftest import Cluster, Replica
from tests.integration.distributed.harness import ready, stream_events
from tests.integration.service.conftest import eventually
from tests.integration.service.fleet import Fleet

APPS = 20


async def _stored(cluster: Cluster) -> dict[str, set[int]]:
    """Session id -> the seqs of its entries ``CP_AUDIT`` holds."""
    held: dict[str, set[int]] = {}
    for message in await stream_events(cluster.nats_url, cluster.audit_stream):
        if "._checkpoint." in message.subject:
            continue
        for row in message.rows:
            held.setdefault(row["session_id"], set()).add(row["seq"])
    return held


async def _unready(replica: Replica) -> dict[str, Any] | None:
    ok, checks = await ready(replica.http, replica.base)
    return None if ok else checks


@pytest.mark.timeout(120)
async def test_a_full_audit_stream_refuses_new_lines_and_deletes_nothing(cluster: Cluster) -> None:
    a = await cluster.start("node-a", readiness_stall_s=3.0, audit_checkpoint_interval_s=3600)
    fleet = Fleet(a.ws_base)
    nc = await cluster.nats()
    try:
        apps = await fleet.open_apps(APPS, "ack")
        ids = {app.session_id for app in apps}
        await a.publish({"id": "tone", "set": {"system_prompt": "v1 " + "a" * 500}})

        async def shipped() -> dict[str, set[int]] | None:
            held = await _stored(cluster)
            whole = all(len(held.get(sid, ())) >= 3 for sid in ids)  # connect, sent, acked
            _, checks = await ready(a.http, a.base)
            return held if whole and checks["audit_backlog_bytes"] == 0 else None

        before = await eventually(shipped, timeout=20)
        js = nc.jetstream()
        info = await js.stream_info(cluster.audit_stream)
        cap = info.state.bytes + 4096  # room for a little more, then full
        await js.update_stream(info.config.evolve(max_bytes=cap))

        for _ in range(8):  # each version: a batch of 40 entries, ~1 KB random even zipped
            await a.publish({"id": "tone", "set": {"system_prompt": secrets.token_hex(1000)}})
        checks = await eventually(lambda: _unready(a), timeout=15)
        assert checks["audit_shipping"] is False, checks
        assert "audit shipping to the durable stream failing" in checks["failing"]["audit_shipping"]
        info = await js.stream_info(cluster.audit_stream)
        assert info.state.bytes <= cap
        during = await _stored(cluster)
        for sid, seqs in before.items():  # nothing stored before was deleted to make room
            assert seqs <= during.get(sid, set()), (sid, sorted(seqs), sorted(during.get(sid, ())))

        await js.update_stream(info.config.evolve(max_bytes=-1))  # the operator raises it
        await eventually(lambda: _ready(a), timeout=15)
        local = {sid: [e["seq"] for e in await a.log(sid)] for sid in ids}

        async def complete() -> bool:
            held = await _stored(cluster)
            return all(sorted(held.get(sid, ())) == seqs for sid, seqs in local.items())

        await eventually(complete, timeout=20)
    finally:
        await fleet.close()
        await nc.close()


async def _ready(replica: Replica) -> bool:
    return (await ready(replica.http, replica.base))[0]


@pytest.mark.timeout(60)
async def test_a_full_policy_stream_refuses_publishes_and_keeps_every_version(
    cluster: Cluster,
) -> None:
    """``CP_POLICY`` keeps every version (replay, history, rollback): a size cap an operator
    adds refuses the next publish (503) and deletes nothing; with discard-old the first
    versions vanished and a replica started later replayed a history without them."""
    a = await cluster.start("node-a")
    nc = await cluster.nats()
    try:
        await a.publish({"id": "first", "set": {"system_prompt": "kept"}})
        js = nc.jetstream()
        info = await js.stream_info(cluster.policy_stream)
        await js.update_stream(info.config.evolve(max_bytes=info.state.bytes + 8192))
        refused: dict[str, Any] = {}
        for _ in range(12):  # until the stream is full
            body = {"id": "big", "set": {"system_prompt": secrets.token_hex(1000)}}
            answer = await a.call("POST", "/v1/policies", body=body)
            if "version" not in answer:
                refused = answer["error"]
                break
        assert refused.get("code") == "nats_unavailable", refused
        assert "JetStream refused it: maximum bytes exceeded" in refused["message"], refused
        stored = await stream_events(cluster.nats_url, cluster.policy_stream)
        assert stored[0].seq == 1 and stored[0].subject.endswith(".policy.first")
        b = await cluster.start("node-b")  # replays the stream: every stored version is there
        history = await b.call("GET", "/v1/policies/first/versions", expect=200)
        assert [v["version"] for v in history["items"]] == [1]
    finally:
        await nc.close()
