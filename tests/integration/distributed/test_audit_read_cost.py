"""What reading one session's trail back from ``CP_AUDIT`` costs (real NATS JetStream).

A session's later entries live in its node's batches, among every other session's. Before, a
session read fetched and decompressed every batch of every node stored since the session's
first entry: the cost grew with the fleet's activity, not with the session (a quiet session
on a busy fleet read the fleet's whole audit since it began). Now each batch carries an
index of its sessions in a header (``audit.batches.session_filter``): the reader scans the
headers only and fetches the few payloads that may hold the session. Stores written before
the index read as before (every batch fetched) and verify the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nats
import pytest

from controlplane.audit.batches import FILTER_HEADER
from controlplane.audit.shipper import AuditShipper
from controlplane.cluster.nats_audit import MAX_FETCHES, NatsAuditStream
from controlplane.cluster.nats_bus import NatsConnection
from controlplane.config import Settings
from controlplane.metrics import Metrics
from sessions.clock import FakeClock
from sessions.versionchain import verify_entries
from sessions.versionlog.file import FileVersionLog

OTHERS = 20  # sessions busy around ours
ROUNDS = 15  # entries per busy session: 300 lines, ours has 3
BATCH = 1  # lines per shipped batch (the shipper's batch_lines): ~280 batches after ours began


async def _noop() -> None:
    return None


async def _build(root: Path, settings: Settings) -> list[str]:
    """``ours`` gets 3 entries among 20 busy sessions' 300; shipped as ~300 batches."""
    log = FileVersionLog(root, FakeClock(1_790_000_000.0), fsync=False, flush_interval_s=None)
    await log.start()
    others = [f"busy-{i:02}" for i in range(OTHERS)]
    for r in range(ROUNDS):
        if r % 5 == 0:
            cause = "connect" if r == 0 else "policy"
            log.append("ours", version=r // 5 + 1, cause=cause, status="sent",
                       delta={"prompt": f"v{r}"}, config={"prompt": f"v{r}"})  # fmt: skip
        for sid in others:
            log.append(sid, version=r + 1, cause="connect" if r == 0 else "policy",
                       status="sent", delta={"prompt": f"{sid} {r}"},
                       config={"prompt": f"{sid} {r}"})  # fmt: skip
    await log.close()
    conn = NatsConnection(settings, name="test shipper")
    await conn.connect()
    try:
        shipper = AuditShipper(root, root.parent / "cursor.json", NatsAuditStream(conn),
                               flush=_noop, metrics=Metrics(), batch_lines=BATCH)  # fmt: skip
        await shipper.ship_pending()
    finally:
        await conn.close()
    return others


async def _read(
    settings: Settings, session_id: str
) -> tuple[list[dict[str, Any]], NatsAuditStream, int]:
    """The session's rows, the reader (its ``read_cost``) and the bytes NATS delivered."""
    conn = NatsConnection(settings, name="test reader")
    await conn.connect()
    try:
        stream = NatsAuditStream(conn)
        before = conn.client.stats["in_bytes"]
        rows = await stream.session_rows(session_id)
        return rows, stream, int(conn.client.stats["in_bytes"] - before)
    finally:
        await conn.close()


@pytest.mark.timeout(120)
async def test_a_session_read_fetches_only_the_batches_that_hold_it(
    nats_url: str, tmp_path: Path
) -> None:
    uid = tmp_path.name[-8:].replace("-", "_")
    stream, prefix = f"TREAD{uid}", f"tread{uid}"
    settings = Settings(nats_url=nats_url, nats_audit_stream=stream, nats_subject_prefix=prefix,
                        node_id="node-a")  # fmt: skip
    old = Settings(nats_url=nats_url, nats_audit_stream=f"{stream}_OLD",
                   nats_subject_prefix=f"{prefix}old", node_id="node-a")  # fmt: skip
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        await _build(tmp_path / "audit", settings)
        # the same store as written before the index: the batches without their header
        await js.add_stream(name=f"{stream}_OLD", subjects=[f"{prefix}old.audit.>"])
        sub = await js.pull_subscribe(f"{prefix}.audit.>", stream=stream)
        payloads = 0
        batches = 0
        while True:
            try:
                msgs = await sub.fetch(500, timeout=1)
            except nats.errors.TimeoutError:
                break
            for msg in msgs:
                headers = dict(msg.headers or {})
                if "._batch." in msg.subject:
                    payloads += len(msg.data)
                    batches += 1
                headers.pop(FILTER_HEADER, None)
                headers.pop("Nats-Msg-Id", None)
                subject = msg.subject.replace(f"{prefix}.audit.", f"{prefix}old.audit.", 1)
                await js.publish(subject, msg.data, headers=headers, stream=f"{stream}_OLD")
        await sub.unsubscribe()
        assert batches > MAX_FETCHES, batches  # the old store's read streams its batches

        rows, reader, delivered = await _read(settings, "ours")
        assert [r["seq"] for r in rows] == [1, 2, 3]
        assert verify_entries("ours", rows).ok
        assert delivered < payloads / 4, (delivered, payloads)  # headers, not the batches
        cost = reader.read_cost
        assert cost.batches_seen >= batches - OTHERS  # the headers since its first entry
        assert cost.batches_fetched <= 2 + 4, cost  # its 2 later entries, a few false hits

        old_rows, old_reader, old_delivered = await _read(old, "ours")
        assert old_rows == rows and verify_entries("ours", old_rows).ok
        assert old_reader.read_cost.batches_fetched >= batches - OTHERS  # unindexed: every one
        assert old_delivered > payloads * 0.9, (old_delivered, payloads)

        busy, _, _ = await _read(settings, "busy-07")  # a session in most batches
        assert [r["seq"] for r in busy] == list(range(1, ROUNDS + 1))
        assert verify_entries("busy-07", busy).ok
    finally:
        for name in (stream, f"{stream}_OLD"):
            try:
                await js.delete_stream(name)
            except nats.js.errors.NotFoundError:
                pass
        await nc.close()
