"""``sessions.versionlog.spill``: what ``controlplane audit recover`` appends, and what it
refuses with nothing appended (the end-to-end path on a failed ext4 disk is
tests/integration/distributed/test_disk_read_only.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sessions.clock import FakeClock
from sessions.versionlog.file import FileVersionLog
from sessions.versionlog.spill import RecoverError, recover, spill


async def _lines(directory: Path, sessions: dict[str, int], tone: str = "v") -> list[bytes]:
    """The lines of a real log holding ``n`` entries per session, in write order."""
    log = FileVersionLog(directory, FakeClock(), fsync=False, flush_interval_s=None)
    await log.start()
    for sid, n in sessions.items():
        for version in range(1, n + 1):
            log.append(sid, version=version, cause="policy", status="acked",
                       config={"prompt": f"{tone}{version}"})  # fmt: skip
    await log.flush()
    await log.close()
    [path] = sorted(directory.glob("versionlog-*.jsonl"))
    return [line + b"\n" for line in path.read_bytes().splitlines()]


def _files(audit: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(audit.glob("versionlog-*.jsonl")))


async def test_recover_appends_the_rest_of_each_chain_once(tmp_path: Path) -> None:
    lines = await _lines(tmp_path / "whole", {"s1": 3, "s2": 2})
    audit = tmp_path / "audit"
    audit.mkdir()
    # the disk kept s1's first two entries (the second from a write whose fsync failed)
    (audit / "versionlog-2026-01-01.jsonl").write_bytes(lines[0] + lines[1])
    spilled = spill(tmp_path / "spill", lines[1:], 0.0)
    done = recover(audit, spilled, 0.0)
    assert (done.entries, done.sessions, done.present) == (3, 2, 1)
    assert _files(audit) == b"".join(lines)  # byte for byte, once each
    with pytest.raises(RecoverError, match="in the log already"):
        recover(audit, spilled, 0.0)
    assert _files(audit) == b"".join(lines)


@pytest.mark.parametrize("fault", ["gap", "edited", "other_twin", "not_json"])
async def test_recover_refuses_a_file_that_would_break_a_chain(tmp_path: Path, fault: str) -> None:
    lines = await _lines(tmp_path / "whole", {"s1": 4})
    other = await _lines(tmp_path / "other", {"s1": 4}, tone="w")  # same ids, other content
    audit = tmp_path / "audit"
    audit.mkdir()
    (audit / "versionlog-2026-01-01.jsonl").write_bytes(lines[0])
    rest = lines[1:]
    if fault == "gap":  # seq 2 missing
        rest = rest[1:]
    elif fault == "edited":
        row = json.loads(rest[1])
        row["status"] = "rejected"
        rest[1] = json.dumps(row, separators=(",", ":")).encode() + b"\n"
    elif fault == "other_twin":  # a different entry for seq 1, which the log has
        rest = [other[0], *rest]
    else:
        rest = [*rest, b"{not json\n"]
    spilled = spill(tmp_path / "spill", rest, 0.0)
    before = _files(audit)
    with pytest.raises(RecoverError, match=r"nothing appended|not a log entry"):
        recover(audit, spilled, 0.0)
    assert _files(audit) == before
