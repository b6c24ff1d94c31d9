"""Pure parts of the version log: canonical JSON, the chain verifier, and the buffering rules
(driven through small in-process fakes of the storage step, no servers)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import pytest

from policies.provenance import PolicyRef
from sessions.clock import FakeClock
from sessions.versionlog.core import (
    GENESIS,
    Pending,
    canonical,
    canonical_json,
    config_hash,
    verify_entries,
)
from sessions.versionlog.memory import MemoryVersionLog


def test_canonical_json() -> None:
    assert canonical_json({"b": (1, 2.5), "a": {"z": None, "é": "ü"}}) == (
        '{"a":{"z":null,"é":"ü"},"b":[1,2.5]}'.encode()
    )
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})
    assert config_hash({"keyterms": ("a",), "prompt": "p"}) == config_hash(
        {"prompt": "p", "keyterms": ["a"]}
    )
    assert config_hash({}) == hashlib.sha256(b"{}").hexdigest()


def chain(n: int, sid: str = "s") -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    prev = GENESIS
    for seq in range(1, n + 1):
        row: dict[str, Any] = {
            "seq": seq,
            "at": 1.0 * seq,
            "session_id": sid,
            "version": seq,
            "cause": "policy",
            "policies": [],
            "delta": {"prompt": str(seq)},
            "wire": None,
            "status": "sent",
            "error": None,
            "config_hash": "c" * 64,
            "prev_hash": prev,
        }
        body = json.dumps(row, sort_keys=True, separators=(",", ":")).encode()
        row["hash"] = prev = hashlib.sha256(prev.encode() + body).hexdigest()
        rows.append(row)
    return rows


def rehashed(row: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in row.items() if k != "hash"}
    digest = hashlib.sha256(row["prev_hash"].encode() + canonical_json(body)).hexdigest()
    return {**row, "hash": digest}


R = chain(6)
CASES: list[tuple[str, list[dict[str, Any]], str | None, int | None]] = [
    ("intact", R, None, None),
    ("empty", [], None, None),
    ("edited", [*R[:3], {**R[3], "status": "acked"}, *R[4:]], "edited", 4),
    ("edited seq field", [*R[:3], {**R[3], "seq": 9}, *R[4:]], "edited", 4),
    ("edited and re-hashed", [*R[:3], rehashed({**R[3], "error": "x"}), *R[4:]], "edited", 4),
    ("re-hashed first", [rehashed({**R[0], "cause": "rollback"}), *R[1:]], "edited", 1),
    ("genesis replaced", [rehashed({**R[0], "prev_hash": "1" * 64}), *R[1:]], "edited", 1),
    ("deleted one", [*R[:2], *R[3:]], "deleted", 3),
    ("deleted range", [*R[:1], *R[4:]], "deleted", 2),
    ("deleted first", R[1:], "deleted", 1),
    ("reordered", [R[0], R[2], R[1], *R[3:]], "reordered", 2),
    ("moved to the end", [*R[:2], *R[3:], R[2]], "reordered", 3),
    ("duplicated", [*R[:4], R[1], *R[4:]], "inserted", 2),
    ("forged twin", [*R[:2], rehashed({**R[2], "status": "acked"}), *R[2:]], "inserted", 3),
    ("forged extra seq", [*R[:2], rehashed({**R[2], "seq": 99}), *R[2:]], "inserted", 99),
    ("foreign entry", [*R[:2], chain(3, "other")[2], *R[2:]], "inserted", 3),
    ("malformed", [*R[:2], {"seq": 3}, *R[2:]], "malformed", 3),
]


@pytest.mark.parametrize(
    ("rows", "kind", "first_bad"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_verify_entries(
    rows: list[dict[str, Any]], kind: str | None, first_bad: int | None
) -> None:
    report = verify_entries("s", rows)
    assert (report.ok, report.kind, report.first_bad_seq) == (kind is None, kind, first_bad), (
        report.problem
    )
    assert report.count == len(rows)
    assert report.session_id == "s"
    if kind is not None:
        assert report.problem is not None and report.problem.startswith(kind + ": ")


def test_verify_entries_with_the_writers_tail() -> None:
    tail = (R[-1]["seq"], R[-1]["hash"])
    assert verify_entries("s", R, tail=tail).ok
    cut = verify_entries("s", R[:4], tail=tail)
    assert (cut.kind, cut.first_bad_seq) == ("truncated", 5)
    assert cut.problem == "truncated: seqs 5-6 missing at the end"
    assert verify_entries("s", R[:5], tail=tail).problem == "truncated: seq 6 missing at the end"
    gone = verify_entries("s", [], tail=tail)
    assert (gone.kind, gone.first_bad_seq) == ("truncated", 1)
    assert not verify_entries("s", R, tail=(6, "f" * 64)).ok


class GatedLog(MemoryVersionLog):
    """Storage whose write waits for a gate, and can be told to fail."""

    def __init__(self) -> None:
        super().__init__(FakeClock(), flush_interval_s=0.01)
        self.gate = asyncio.Event()
        self.gate.set()
        self.failures = 0
        self.writes = 0

    async def _write(self, batch: list[Pending]) -> None:
        await self.gate.wait()
        self.writes += 1
        if self.failures:
            self.failures -= 1
            raise OSError("disk on fire")
        await super()._write(batch)


def add(log: MemoryVersionLog, version: int) -> None:
    log.append("s", version=version, cause="policy", status="sent", config={})


async def test_a_cancelled_flush_finishes_its_write_exactly_once() -> None:
    log = GatedLog()
    add(log, 1)
    log.gate.clear()
    flushing = asyncio.create_task(log.flush())
    await asyncio.sleep(0.01)
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    assert log.pending == 1  # still in flight, not lost
    add(log, 2)
    log.gate.set()
    await log.flush()
    assert [row["seq"] for row in log.storage["s"]] == [1, 2]
    assert log.pending == 0
    await log.close()


async def test_a_failed_flush_keeps_order_with_newer_appends() -> None:
    log = GatedLog()
    add(log, 1)
    log.failures = 1
    with pytest.raises(OSError, match="fire"):
        await log.flush()
    add(log, 2)
    assert log.pending == 2
    await log.flush()
    assert [row["seq"] for row in log.storage["s"]] == [1, 2]
    assert (await log.verify("s"))[0].ok


async def test_the_background_flusher_survives_failures() -> None:
    log = GatedLog()
    log.failures = 2
    await log.start()
    add(log, 1)
    for _ in range(200):
        if log.storage.get("s"):
            break
        await asyncio.sleep(0.005)
    assert [row["seq"] for row in log.storage["s"]] == [1]
    assert log.flush_failures == 2
    await log.close()
    await log.close()  # idempotent


async def test_close_flushes_what_is_left() -> None:
    log = GatedLog()
    await log.start()
    add(log, 1)
    await log.close()
    assert len(log.storage["s"]) == 1


async def test_add_reuses_a_template_only_for_members_that_cannot_change() -> None:
    log = MemoryVersionLog(FakeClock())
    delta = canonical({"prompt": "p2"})
    config = canonical({"prompt": "p2"})
    refs = (PolicyRef("pol", 2),)
    for sid in ("a", "b"):  # a fan-out: the same Canonical members for every session
        log.add(sid, version=2, cause="policy", policies=refs, delta=delta, wire=delta,
                status="sent", config=config)  # fmt: skip
    plain = {"prompt": "p3"}  # a plain mapping may change between calls: encoded every time
    log.add("a", version=3, cause="policy", policies=refs, delta=plain, status="sent",
            config=config)  # fmt: skip
    plain["prompt"] = "p4"
    log.add("b", version=3, cause="policy", policies=refs, delta=plain, status="sent",
            config=config)  # fmt: skip
    # a connect entry carries the starting config only at version 1
    for version in (1, 2):
        log.add("c", version=version, cause="connect", status="sent", config=config)
    await log.flush()
    a, b, c = [await log.entries(sid) for sid in "abc"]
    assert [(e.seq, e.session_id, e.delta, e.wire) for e in a + b] == [
        (1, "a", {"prompt": "p2"}, {"prompt": "p2"}),
        (2, "a", {"prompt": "p3"}, None),
        (1, "b", {"prompt": "p2"}, {"prompt": "p2"}),
        (2, "b", {"prompt": "p4"}, None),
    ]
    assert [e.config for e in c] == [{"prompt": "p2"}, None]
    assert all(report.ok for report in await log.verify())
