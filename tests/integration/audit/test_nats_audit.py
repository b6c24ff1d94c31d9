"""Checkpoints through the durable stream ``CP_AUDIT`` (real nats-server and redis-server):
shipped next to the entries, verified by ``audit verify --nats-url`` and by another replica,
used by ``audit at``; tampering with entries or checkpoints in the stream is named."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import nats
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controlplane import cli
from controlplane.audit.batches import unpack
from sessions.checkpoints import CheckpointSigner, make_checkpoints
from tests.integration.distributed.conftest import Cluster
from tests.integration.service.conftest import eventually

Message = tuple[str, dict[str, Any]]  # subject without the prefix, row


async def read_stream(c: Cluster) -> list[Message]:
    """Every line of the test's audit stream, in stream order (copied back one per message:
    the per-entry form readers still read)."""
    nc = await nats.connect(c.nats_url)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(f"{c.subject_prefix}.audit.>", stream=c.audit_stream)
        pending = (await sub.consumer_info()).num_pending or 0
        out: list[Message] = []
        while pending:
            fetched = await sub.fetch(pending, timeout=5)
            for msg in fetched:  # a batch message holds many lines (audit.batches)
                subject = msg.subject.split(".audit.", 1)[1]
                out.extend((subject, json.loads(line)) for line in unpack(msg.data, msg.headers))
                await msg.ack()
            pending -= len(fetched)
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


async def copy_stream(c: Cluster, name: str, messages: list[Message]) -> list[str]:
    """A new stream holding ``messages`` in this order; returns the CLI's NATS options."""
    stream, prefix = f"{c.audit_stream}_{name}", f"{c.subject_prefix}x{name}"
    nc = await nats.connect(c.nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{prefix}.audit.>"])
        for subject, row in messages:
            await js.publish(f"{prefix}.audit.{subject}", json.dumps(row).encode(), stream=stream)
    finally:
        await nc.close()
    return ["--nats-url", c.nats_url, "--nats-audit-stream", stream,
            "--nats-subject-prefix", prefix]  # fmt: skip


async def drop_stream(c: Cluster, name: str) -> None:
    nc = await nats.connect(c.nats_url)
    try:
        await nc.jetstream().delete_stream(f"{c.audit_stream}_{name}")
    finally:
        await nc.close()


def run(capsys: Any, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(list(args))
    return code, capsys.readouterr().out


async def test_checkpoints_travel_with_the_trail_and_tampering_in_the_stream_is_named(
    cluster: Cluster, capsys: Any
) -> None:
    a = await cluster.start("node-a", audit_checkpoint_interval_s=0.2)
    moments: list[float] = []
    async with a.client(labels={"tenant": "acme"}) as app:
        sid = app.session_id
        assert sid is not None
        pushes = app.pushes()
        for n in (1, 2, 3):
            await a.publish({"id": "p", "set": {"system_prompt": f"v{n}"}})
            push = await asyncio.wait_for(anext(pushes), 5)
            await app.applied(push.version)
            await eventually(lambda n=n: _acked(a, sid, n))  # type: ignore[misc]

            async def checkpointed() -> bool:  # a checkpoint after each version (every 0.2 s)
                seqs = len(await a.log(sid))
                body = await a.call("GET", f"/v1/audit/verify?session={sid}", expect=200)
                covered = body["items"][0]["covered_seq"] if body["items"] else None
                return (covered or 0) >= seqs

            await eventually(checkpointed)
            moments.append(time.time())
    local = await a.log(sid)
    await a.stop()  # the last checkpoint, shipped at close
    opts = ["--nats-url", cluster.nats_url, "--nats-audit-stream", cluster.audit_stream,
            "--nats-subject-prefix", cluster.subject_prefix]  # fmt: skip

    code, out = await asyncio.to_thread(run, capsys, "audit", "verify", sid, "--json", *opts)
    answer = json.loads(out)
    assert code == 0, out
    assert answer["source"] == "CP_AUDIT"
    assert answer["items"][0]["covered_seq"] == len(local)
    assert answer["checkpoints"]["ok"] is True and answer["checkpoints"]["count"] >= 3
    assert list(answer["checkpoints"]["nodes"]) == ["node-a"]

    code, out = await asyncio.to_thread(run, capsys, "audit", "at", sid, str(moments[1]),
                                        "--json", *opts)  # fmt: skip
    found = json.loads(out)
    assert code == 0, out
    assert found["config"] == {"system_prompt": "v2"} and found["source"] == "CP_AUDIT"
    assert found["established_by"]["status"] == "acked"
    assert found["checkpoint"]["covered"] is True and found["verified"] is True

    # another replica answers for the stopped replica's session from CP_AUDIT alone
    b = await cluster.start("node-b")
    remote = await b.call("GET", f"/v1/audit/verify?session={sid}", expect=200)
    assert remote["source"] == "CP_AUDIT" and remote["ok"] is True
    assert remote["items"][0]["covered_seq"] == len(local)
    at = await b.call("GET", f"/v1/sessions/{sid}/config-at?at={moments[0]!r}", expect=200)
    assert at["config"] == {"system_prompt": "v1"} and at["source"] == "CP_AUDIT"

    messages = await read_stream(cluster)
    ours = [m for m in messages if m[1].get("session_id") == sid]
    checkpoints = [m for m in messages if m[1].get("type") == "checkpoint"]
    assert len(ours) == len(local) and len(checkpoints) >= 3
    assert all(m[0] == "_checkpoint.node-a" for m in checkpoints)
    last_seq = len(local)

    def without(pred: Callable[[Message], bool]) -> list[Message]:
        return [m for m in messages if not pred(m)]

    def edited_entry() -> list[Message]:
        out = [(s, dict(r)) for s, r in messages]
        i = next(i for i, (_, r) in enumerate(out) if r.get("session_id") == sid and r["seq"] == 3)
        out[i][1]["delta"] = {"system_prompt": "forged"}
        return out

    def edited_head() -> list[Message]:
        out = [(s, json.loads(json.dumps(r))) for s, r in messages]
        last = max(i for i, (_, r) in enumerate(out) if r.get("type") == "checkpoint")
        out[last][1]["heads"][sid] = [1, out[last][1]["heads"].get(sid, [0, ""])[1]]
        return out

    middle = checkpoints[1][1]["seq"]
    other = CheckpointSigner(Ed25519PrivateKey.generate())
    tip = checkpoints[-1][1]
    lines, _ = make_checkpoints(other, node="node-a", at=tip["at"] + 1, heads={sid: (1, "0" * 64)},
                                prev=(tip["seq"], tip["hash"]))  # fmt: skip
    forged = [*messages, ("_checkpoint.node-a", json.loads(lines[0]))]
    cases: list[tuple[str, list[Message], str]] = [
        ("pristine", messages, f"ok      {sid}  {last_seq} entries, checkpointed to seq "
         f"{last_seq}"),
        ("truncated", without(lambda m: m[1].get("session_id") == sid and m[1]["seq"] == last_seq),
         f"BROKEN  {sid}  first bad seq {last_seq}: truncated: seq {last_seq} missing at the end"),
        ("edited", edited_entry(), f"BROKEN  {sid}  first bad seq 3: edited"),
        ("nomiddle", without(lambda m: m[1].get("type") == "checkpoint"
                             and m[1]["seq"] == middle),
         f"BAD CHECKPOINT  deleted: checkpoint node-a #{middle + 1}: checkpoint #{middle} "
         "missing before it"),
        ("head", edited_head(), f"BAD CHECKPOINT  edited: checkpoint node-a #{tip['seq']}: its "
         "content does not match its hash"),
        ("otherkey", forged, f"BAD CHECKPOINT  untrusted: checkpoint node-a #{tip['seq'] + 1} "
         f"(key {other.key_id[:16]}…): signed by key {other.key_id[:16]}…, whose chain has no #1"),
    ]  # fmt: skip
    for name, copy, named in cases:
        nats_opts = await copy_stream(cluster, name, copy)
        try:
            code, out = await asyncio.to_thread(run, capsys, "audit", "verify", *nats_opts)
        finally:
            await drop_stream(cluster, name)
        assert named in out, (name, out)
        assert code == (0 if name == "pristine" else 1), (name, out)
        if name in ("nomiddle", "head", "otherkey"):  # the entries themselves are intact
            assert f"ok      {sid}" in out, (name, out)


async def _acked(a: Any, sid: str, n: int) -> bool:
    entries = await a.log(sid)
    return sum(1 for e in entries if e["status"] == "acked" and e["cause"] == "policy") >= n
