"""The audit shipper and signed checkpoints over real JSONL files (a recording transport we
own stands in for CP_AUDIT): checkpoints ship after their entries, with their own cursor;
the file log keeps its checkpoint chain across a restart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controlplane.audit.shipper import CHECKPOINT_SHIP_S, AuditShipper
from controlplane.metrics import Metrics
from sessions.checkpoints import CheckpointSigner, verify_checkpoints
from sessions.clock import FakeClock
from sessions.versionlog.file import Checkpointing, FileVersionLog
from tests.integration.distributed.test_pieces import Recorder
from tests.integration.service.conftest import eventually

SIGNER = CheckpointSigner(Ed25519PrivateKey.generate())


def _log(root: Path, clock: FakeClock, every: int = 10**6) -> FileVersionLog:
    return FileVersionLog(root, clock, fsync=False, flush_interval_s=None,
                          checkpointing=Checkpointing(SIGNER, "n1", every_entries=every,
                                                      interval_s=3600))  # fmt: skip


def _append(log: FileVersionLog, sid: str, versions: range) -> None:
    for v in versions:
        log.append(sid, version=v, cause="connect" if v == 1 else "policy", status="sent",
                   delta={"prompt": f"v{v}"}, config={"prompt": f"v{v}"})  # fmt: skip


async def test_checkpoints_ship_after_their_entries_with_a_cursor_of_their_own(
    tmp_path: Path,
) -> None:
    clock = FakeClock(1_790_000_000.0)
    log = _log(tmp_path / "audit", clock)
    await log.start()
    transport = Recorder()
    cursor = tmp_path / "cursor.json"
    shipper = AuditShipper(tmp_path / "audit", cursor, transport, flush=log.flush,
                           metrics=Metrics())  # fmt: skip
    _append(log, "s1", range(1, 3))
    await log.flush()
    await log.checkpoint()
    _append(log, "s1", range(3, 4))
    await log.flush()
    await log.checkpoint()
    assert await shipper.ship_pending() == 5
    kinds = [(x.node, x.session_id, x.seq) for x in transport.stored]
    assert kinds == [(None, "s1", 1), (None, "s1", 2), (None, "s1", 3), ("n1", "", 1),
                     ("n1", "", 2)]  # fmt: skip
    saved = json.loads(cursor.read_text())
    assert saved["checkpoints"]["file"].startswith("checkpoints-")
    assert saved["file"].startswith("versionlog-")
    records = [json.loads(x.data) for x in transport.stored if x.node is not None]
    assert verify_checkpoints(records).ok

    # nothing twice; a cursor written before checkpoints existed ships them from the start
    assert await shipper.ship_pending() == 0
    cursor.write_text(json.dumps({"file": saved["file"], "offset": saved["offset"]}))
    again = AuditShipper(tmp_path / "audit", cursor, transport, flush=log.flush,
                         metrics=Metrics())  # fmt: skip
    await again.start()
    await again.close(final_timeout_s=5)
    assert [(x.node, x.seq) for x in transport.stored[5:]] == [("n1", 1), ("n1", 2)]
    await log.close()


async def test_the_checkpoint_chain_continues_across_a_restart_and_covers_crash_leftovers(
    tmp_path: Path,
) -> None:
    clock = FakeClock(1_790_000_000.0)
    root = tmp_path / "audit"
    log = _log(root, clock, every=2)
    await log.start()
    _append(log, "s1", range(1, 3))
    await log.flush()  # two entries: due, written by the background task (interval: 1 h)
    await eventually(lambda: len(list(root.glob("checkpoints-*"))) == 1)
    await log.close()  # and nothing left for the last one
    first = [json.loads(line) for p in sorted(root.glob("checkpoints-*")) for line in
             p.read_text().splitlines()]  # fmt: skip
    assert [r["seq"] for r in first] == [1]

    # entries written by a process that died before its next checkpoint
    crashed = FileVersionLog(root, clock, fsync=False, flush_interval_s=None)
    await crashed.start()
    _append(crashed, "s2", range(1, 2))
    await crashed.close()

    again = _log(root, clock)
    await again.start()
    await again.close()  # the leftover head is committed at the next checkpoint
    rows = await again.checkpoint_rows()
    assert [r["seq"] for r in rows] == [1, 2] and rows[1]["prev"] == rows[0]["hash"]
    assert rows[1]["heads"] == {"s2": [1, (await again.stored_rows("s2"))[0]["hash"]]}
    trail = await again.verify_trail()
    assert trail.ok and {r.session_id: r.covered_seq for r in trail.sessions} == {"s1": 2, "s2": 1}


async def test_paced_checkpoints_ship_at_most_once_per_interval(tmp_path: Path) -> None:
    """The loop's passes (``paced``) ship checkpoints at most every CHECKPOINT_SHIP_S, so the
    checkpoints a large publish triggers (one per 1,000 entries) are one batch per interval,
    not one per pass (issue #23); ``ship_pending()`` unpaced (close) ships everything."""
    clock = FakeClock(1_790_000_000.0)
    log = _log(tmp_path / "audit", clock)
    await log.start()
    transport = Recorder()
    shipper = AuditShipper(tmp_path / "audit", tmp_path / "cursor.json", transport,
                           flush=log.flush, metrics=Metrics(), clock=clock)  # fmt: skip
    _append(log, "s1", range(1, 3))
    await log.flush()
    await log.checkpoint()
    assert await shipper.ship_pending(paced=True) == 3  # the first checkpoint: at once
    _append(log, "s1", range(3, 4))
    await log.flush()
    await log.checkpoint()
    assert await shipper.ship_pending(paced=True) == 1  # the entry; its checkpoint waits
    clock.advance(CHECKPOINT_SHIP_S - 0.1)
    _append(log, "s1", range(4, 5))
    await log.flush()
    await log.checkpoint()
    assert await shipper.ship_pending(paced=True) == 1
    assert shipper.backlog_bytes > 0
    clock.advance(0.1)
    assert await shipper.ship_pending(paced=True) == 2  # both waiting checkpoints, one pass
    assert [(x.node, x.seq) for x in transport.stored] == [
        (None, 1), (None, 2), ("n1", 1), (None, 3), (None, 4), ("n1", 2), ("n1", 3)]  # fmt: skip
    _append(log, "s1", range(5, 6))
    await log.flush()
    await log.checkpoint()
    assert await shipper.ship_pending() == 2  # unpaced: everything
    assert shipper.backlog_bytes == 0
    await log.close()


async def test_a_burst_past_the_entry_count_is_one_checkpoint_after_the_minimum_gap(
    tmp_path: Path,
) -> None:
    """``min_gap_s``: entries past ``every_entries`` right after a checkpoint wait for the gap,
    so a burst (a fan-out's `sent` entries, then its acknowledgements) is signed once with
    each session's last head, not once per ``every_entries`` (issue #23: the checkpoint bytes
    a publish ships grew with its entries)."""
    root = tmp_path / "audit"
    log = FileVersionLog(root, FakeClock(1_790_000_000.0), fsync=False, flush_interval_s=None,
                         checkpointing=Checkpointing(SIGNER, "n1", every_entries=4,
                                                     interval_s=3600, min_gap_s=2.0))  # fmt: skip
    await log.start()
    await log.checkpoint()  # nothing yet: no record
    _append(log, "a", range(1, 5))
    await log.flush()  # due; the gap since start() runs out first
    await eventually(lambda: len(_checkpoints(root)) == 1, timeout=10)
    for sid in ("b", "c"):  # two more triggers inside the gap (without it: one each)
        _append(log, sid, range(1, 5))
        await log.flush()
        await asyncio.sleep(0.2)
    await eventually(lambda: len(_checkpoints(root)) == 2, timeout=10)
    await log.close()  # nothing left for a last one
    rows = _checkpoints(root)
    assert [r["seq"] for r in rows] == [1, 2]
    assert set(rows[0]["heads"]) == {"a"}
    assert {sid: head[0] for sid, head in rows[1]["heads"].items()} == {"b": 4, "c": 4}


def _checkpoints(root: Path) -> list[dict[str, object]]:
    return [json.loads(line) for p in sorted(root.glob("checkpoints-*"))
            for line in p.read_text().splitlines()]  # fmt: skip
