"""nats-server killed (SIGKILL) in the middle of a shipping pass, then restarted on its data.

A pass of 8,000 sessions is 8,000 anchor messages (each session's first entry) plus the
batches of their later entries and a checkpoint batch: the server dies after some of them
were stored and before the rest (and before every PubAck came back). The shipper keeps its
cursor (the chunk is re-shipped whole), the retry after the restart stores what was missing,
and the stream then holds every entry exactly once per id: JetStream's duplicate window
survives the restart, and readers drop any exact duplicate that would not. ``audit verify
--nats-url`` verifies every trail and every checkpoint, each head covered.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from pathlib import Path

import nats
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controlplane.cluster.nats_audit import NatsAuditStream
from controlplane.cluster.nats_bus import NatsConnection
from controlplane.config import Settings
from controlplane.errors import Unavailable
from sessions.checkpoints import CheckpointSigner
from sessions.clock import FakeClock
from tests.integration.distributed.harness import checkpointed_log, shipper, verify_stream
from tests.support.servers import ServerProcess

SESSIONS = 8000


@pytest.mark.timeout(180)
async def test_a_pass_cut_by_a_nats_crash_is_shipped_whole_after_the_restart(
    own_nats: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uid = uuid.uuid4().hex[:8]
    stream, prefix = f"T{uid}_AUDIT", f"t{uid}"
    settings = Settings(nats_url=own_nats.url, nats_audit_stream=stream,
                        nats_subject_prefix=prefix, node_id="node-a",
                        nats_request_timeout_s=2.0)  # fmt: skip
    root = tmp_path / "audit"
    signer = CheckpointSigner(Ed25519PrivateKey.generate())
    log = checkpointed_log(root, FakeClock(1_790_000_000.0), signer, "node-a")
    await log.start()
    ids = [f"cps_{uuid.uuid4().hex}" for _ in range(SESSIONS)]
    for version in (1, 2):
        for sid in ids:
            log.append(sid, version=version, cause="connect" if version == 1 else "policy",
                       status="sent", delta={"prompt": f"v{version}"},
                       config={"prompt": f"v{version}"})  # fmt: skip
    await log.flush()
    await log.checkpoint()
    await log.close()

    conn = NatsConnection(settings, name="test shipper")
    await conn.connect()
    ship = shipper(root, conn)
    probe = await nats.connect(own_nats.url)
    try:
        await NatsAuditStream(conn).ensure()
        shipping = asyncio.create_task(ship.ship_pending())
        while True:  # some of the pass stored, not all of it
            stored = (await probe.jetstream().stream_info(stream)).state.messages
            if stored >= SESSIONS // 4 or shipping.done():
                break
            await asyncio.sleep(0.005)
        assert not shipping.done(), "the pass ended before the crash: nothing cut"
        await probe.close()
        assert own_nats.proc is not None
        os.kill(own_nats.proc.pid, signal.SIGKILL)
        with pytest.raises(Unavailable):
            await shipping
        assert ship.backlog_bytes > 0  # the cursor did not move: the chunk waits on disk
        own_nats.proc.wait(timeout=10)
        await asyncio.to_thread(own_nats.start)  # same port, same store
        for _ in range(60):  # the shipper loop's retries, by hand
            try:
                await ship.ship_pending()
                break
            except Unavailable:
                await asyncio.sleep(0.5)
        assert ship.backlog_bytes == 0
    finally:
        await conn.close()

    probe = await nats.connect(own_nats.url)
    try:
        info = await probe.jetstream().stream_info(stream)
        anchors = await probe.jetstream().stream_info(stream, subjects_filter=f"{prefix}.audit.*")
        assert len(anchors.state.subjects or {}) == SESSIONS  # each session's anchor, once
        assert all(n == 1 for n in (anchors.state.subjects or {}).values())
        assert info.state.messages < SESSIONS + 20, info.state  # anchors + a few batches
        answer = await asyncio.to_thread(verify_stream, own_nats.url, stream, prefix, capsys)
        assert answer["ok"] is True and answer["checkpoints"]["ok"] is True
        items = answer["items"]
        assert sorted(item["session_id"] for item in items) == sorted(ids)
        assert all(item["count"] == 2 == item["covered_seq"] for item in items)
    finally:
        await probe.jetstream().delete_stream(stream)
        await probe.close()
