"""A checkpoint pass covering more heads than fit in one ``CP_AUDIT`` message (real NATS).

Checkpoint batches grow with the sessions changed between checkpoints (~58 bytes per head
compressed, random session ids and hashes): about 17,500 heads fill NATS's default 1 MiB
``max_payload``. Above that the shipper splits the checkpoint batch (``audit.batches.pack``)
into several messages on the node's checkpoint subject; the records must arrive whole and in
order, so the chain still verifies, and every head is still covered, when it is read back
from the stream by a fresh process after the writer restarted and went on checkpointing.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controlplane.cluster.nats_audit import NatsAuditStream
from controlplane.cluster.nats_bus import NatsConnection
from controlplane.config import Settings
from controlplane.edges.control_session import ID_MAX
from sessions.checkpoints import CheckpointSigner, verify_checkpoints
from sessions.clock import FakeClock
from sessions.versionlog.file import FileVersionLog
from tests.integration.distributed.harness import checkpointed_log, shipper, verify_stream
from tests.support.servers import ServerProcess, free_port, nats_binary

SESSIONS = 20_000  # one pass: ~1.16 MB of checkpoint batch compressed, over one message
SIGNER = CheckpointSigner(Ed25519PrivateKey.generate())


def _log(root: Path, clock: FakeClock) -> FileVersionLog:
    return checkpointed_log(root, clock, SIGNER, "node-big")


async def _ship(root: Path, settings: Settings) -> None:
    conn = NatsConnection(settings, name="test shipper")
    await conn.connect()
    try:
        ship = shipper(root, conn)
        await ship.start()  # from the persisted cursor
        await ship.close(final_timeout_s=60)
        assert ship.backlog_bytes == 0
    finally:
        await conn.close()


@pytest.mark.timeout(180)
async def test_a_checkpoint_over_one_message_splits_and_verifies_after_a_restart(
    nats_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uid = uuid.uuid4().hex[:8]
    stream, prefix = f"T{uid}_AUDIT", f"t{uid}"
    settings = Settings(nats_url=nats_url, nats_audit_stream=stream, nats_subject_prefix=prefix,
                        node_id="node-big")  # fmt: skip
    root = tmp_path / "audit"
    clock = FakeClock(1_790_000_000.0)
    ids = [f"cps_{uuid.uuid4().hex}" for _ in range(SESSIONS)]
    log = _log(root, clock)
    await log.start()
    for sid in ids:
        log.append(sid, version=1, cause="connect", status="sent", delta={"prompt": "v1"},
                   config={"prompt": "v1"})  # fmt: skip
    await log.flush()
    assert await log.checkpoint() == SESSIONS // 2000  # records of MAX_HEADS heads
    await log.close()
    await _ship(root, settings)

    # the writer restarts and goes on: its chain continues in the same stream
    clock.advance(60)
    log = _log(root, clock)
    await log.start()
    for sid in ids[:3]:
        log.append(sid, version=2, cause="policy", status="sent", delta={"prompt": "v2"},
                   config={"prompt": "v2"})  # fmt: skip
    await log.flush()
    assert await log.checkpoint() == 1
    await log.close()
    await _ship(root, settings)

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(f"{prefix}.audit._checkpoint.>", stream=stream)
        msgs = await sub.fetch(100, timeout=5)
        sizes = [len(m.data) for m in msgs]
        await sub.unsubscribe()
        # the first pass did not fit one message: split, each under the server's limit
        assert len(msgs) >= 3, sizes
        assert all(size <= nc.max_payload for size in sizes), (sizes, nc.max_payload)
        assert sum(sizes) > nc.max_payload, sizes

        # read back by a fresh process: the whole chain, every head covered
        answer = await asyncio.to_thread(verify_stream, nats_url, stream, prefix, capsys)
        assert answer["source"] == "CP_AUDIT" and answer["ok"] is True
        assert answer["checkpoints"]["ok"] is True
        assert answer["checkpoints"]["count"] == SESSIONS // 2000 + 1
        items = {item["session_id"]: item for item in answer["items"]}
        assert sorted(items) == sorted(ids)
        assert all(item["ok"] and item["covered_seq"] == item["count"] for item in items.values())
        assert [items[sid]["covered_seq"] for sid in ids[:4]] == [2, 2, 2, 1]

        conn = NatsConnection(settings, name="test reader")
        await conn.connect()
        try:
            rows = await NatsAuditStream(conn).checkpoint_rows()
        finally:
            await conn.close()
        assert [row["seq"] for row in rows] == list(range(1, SESSIONS // 2000 + 2))
        report = verify_checkpoints(rows)
        assert report.ok and set(report.commits) == set(ids)
    finally:
        await nc.jetstream().delete_stream(stream)
        await nc.close()


@pytest.fixture
def small_nats(tmp_path: Path) -> Iterator[ServerProcess]:
    """A nats-server whose max_payload is 512 KiB (an operator's choice; the default is 1 MiB)."""
    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text("max_payload: 524288\n")
    argv = [nats_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd",
            str(tmp_path / "js"), "-c", str(conf)]  # fmt: skip
    server = ServerProcess(argv, port, f"nats://127.0.0.1:{port}", tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(120)
async def test_checkpoints_of_the_longest_session_ids_still_ship(small_nats: ServerProcess) -> None:
    """A control-channel session id may be 128 characters of any plane (``ID_MAX``): half a
    KiB of UTF-8 that barely compresses. 2,000 such heads made one signed record of 1.2 MB
    (~830 KB compressed): on a server whose max_payload is 512 KiB no message could hold it,
    every pass failed ("one audit line ... does not fit") and the node's checkpoints never
    reached the stream again. Records are now bounded in bytes too (``MAX_RECORD_BYTES``)."""
    rng = random.Random(7)
    root = small_nats.workdir / "audit"
    settings = Settings(nats_url=small_nats.url, node_id="node-big")
    ids = ["".join(chr(rng.randrange(0x10000, 0x30000)) for _ in range(ID_MAX))
           for _ in range(2000)]  # fmt: skip
    log = _log(root, FakeClock(1_790_000_000.0))
    await log.start()
    for sid in ids:
        log.append(sid, version=1, cause="connect", status="sent", delta={"prompt": "v1"},
                   config={"prompt": "v1"})  # fmt: skip
    await log.flush()
    assert await log.checkpoint() > 1
    await log.close()
    await _ship(root, settings)
    conn = NatsConnection(settings, name="test reader")
    await conn.connect()
    try:
        assert conn.client.max_payload == 524288
        rows = await NatsAuditStream(conn).checkpoint_rows()
        report = verify_checkpoints(rows)
        assert report.ok and set(report.commits) == set(ids)
        one = await NatsAuditStream(conn).session_rows(ids[1234])
    finally:
        await conn.close()
    assert [row["session_id"] for row in one] == [ids[1234]]
