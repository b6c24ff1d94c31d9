"""A shipping attempt that fails half way must not leave a session's later entries stored
before its first one (real NATS).

One attempt publishes a chunk's messages: each new session's first entry (its anchor, on the
session's subject), then the node's batch of the later entries. When the attempt fails, some
of its messages may be stored and others not (outages/test_nats_kill_mid_fanout, under load,
after the NATS restart and a PubAck timeout: one session's stored seqs [2, 1, 2, 3, ...]). The
retry re-publishes the anchor, now stored AFTER the batch holding the session's second entry,
and whoever reads the stream in order (``audit verify``, ``audit export``) sees entry 2
before entry 1, for a trail nobody tampered with. The transport stores a chunk's anchors
before it publishes any batch of it, and each batch before the next.

The injection: the stream stops taking the anchor subjects for one attempt (its subjects
narrowed to the batches), as a JetStream that is not yet listening on them after a restart.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import nats
import pytest

from controlplane.audit.reader import dedupe
from controlplane.audit.shipper import AuditShipper
from controlplane.cluster.nats_audit import NatsAuditStream
from controlplane.cluster.nats_bus import NatsConnection
from controlplane.config import Settings
from controlplane.errors import Unavailable
from controlplane.metrics import Metrics
from sessions.clock import FakeClock
from sessions.versionlog.file import FileVersionLog
from tests.integration.distributed.harness import verify_stream


async def _flushed() -> None:
    return None  # the test flushes its log itself


@pytest.mark.timeout(60)
async def test_an_attempt_that_stored_the_batch_but_not_the_anchor_keeps_the_trail_in_order(
    nats_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uid = uuid.uuid4().hex[:8]
    stream, prefix = f"T{uid}_AUDIT", f"t{uid}"
    settings = Settings(nats_url=nats_url, nats_audit_stream=stream, nats_subject_prefix=prefix,
                        node_id="node-a", nats_request_timeout_s=2.0)  # fmt: skip
    root = tmp_path / "audit"
    log = FileVersionLog(root, FakeClock(1_790_000_000.0), fsync=False, flush_interval_s=None)
    await log.start()
    sid = f"cps_{uuid.uuid4().hex}"
    log.append(sid, version=1, cause="connect", status="sent", delta={"prompt": "v1"},
               config={"prompt": "v1"})  # fmt: skip
    log.append(sid, version=2, cause="policy", status="sent", delta={"prompt": "v2"},
               config={"prompt": "v2"})  # fmt: skip
    await log.flush()
    await log.close()

    conn = NatsConnection(settings, name="test shipper")
    await conn.connect()
    nc = await nats.connect(nats_url)
    try:
        audit = NatsAuditStream(conn)
        await audit.ensure()
        js = nc.jetstream()
        config = (await js.stream_info(stream)).config
        await js.update_stream(config.evolve(subjects=[f"{prefix}.audit._batch.>"]))
        ship = AuditShipper(root, tmp_path / "cursor.json", audit, flush=_flushed,
                            metrics=Metrics())  # fmt: skip
        with pytest.raises(Unavailable):
            await ship.ship_pending()  # the anchor finds no stream: the attempt fails
        await audit.ensure()  # the stream takes every audit subject again
        assert await ship.ship_pending() == 2
        assert ship.backlog_bytes == 0

        rows: list[dict[str, Any]] = []
        await audit.read(lambda data: rows.append(json.loads(data)))
        stored = [r["seq"] for r in rows if r.get("session_id") == sid]
        assert [r["seq"] for r in dedupe([r for r in rows if r.get("session_id") == sid])] == [
            1, 2], stored  # fmt: skip
        assert [r["seq"] for r in await audit.session_rows(sid)] == [1, 2]
    finally:
        await nc.close()
        await conn.close()
    # the whole stream in order, as a fresh process verifies it: exit code 0 (asserted there)
    answer = await asyncio.to_thread(verify_stream, nats_url, stream, prefix, capsys)
    assert answer, answer
