"""Entries a dead disk would not take, kept elsewhere and appended back (docs/reliability.md).

A replica stopping while its data dir's disk refuses writes (full, read-only, failing) still
holds entries in memory: the ``sent`` and ``rejected`` "not sent" of pushes it refused, each
the next link of its session's chain. ``spill`` writes them, whole and in order, to a file of
their own in a second place (``audit_spill_dir``: another disk), ``unwritten-<UTC time>-<pid>
.jsonl``, with an ``fdatasync`` of the file and of its directory; the version log calls it from
``close()`` (``sessions.versionlog.file``).

Once the disk is repaired (or the data dir restored elsewhere), ``recover`` appends a spill
file's lines to the log, byte for byte as they were hashed, after checking everything first:
each line is an entry, each continues its session's chain from what the log holds (seq and
``prev_hash``, from the genesis for a session the log never had; its own hash intact), and
none is a second entry for a seq the log has. An entry the log already holds identically is
not appended again (a write whose ``fdatasync`` failed may have reached the disk all the
same); a file whose entries are all there (recovered before) is refused. All or nothing: one
bad line refuses the file, nothing appended. Run with the replica stopped (the CLI takes the
data dir's lock); the next start signs checkpoints over the appended entries.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sessions.versionchain import verify_entries
from sessions.versionlog.jsonl import FILE_PREFIX, FILE_SUFFIX, scan_files, write_lines

__all__ = ["SPILL_PREFIX", "RecoverError", "Recovered", "keep_unwritten", "recover", "spill"]

# the logger the version log's file backend uses
log = logging.getLogger("sessions.versionlog.core")

SPILL_PREFIX = "unwritten-"


class RecoverError(Exception):
    """A spill file that cannot be appended: the message names the line and why."""


@dataclass(frozen=True, slots=True)
class Recovered:
    entries: int  # appended
    sessions: int
    file: Path  # the log file they were appended to
    present: int  # entries of the file the log held already (identical), not appended


def spill(directory: Path, lines: Sequence[bytes], now: float) -> Path:
    """Write ``lines`` (each ending in a newline) to a new file under ``directory``, durably;
    OSError when it cannot."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    path = directory / f"{SPILL_PREFIX}{stamp}-{os.getpid()}.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
    try:
        write_lines(fd, list(lines))
        os.fdatasync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)  # (the new name durable too)
    finally:
        os.close(dir_fd)
    return path


def keep_unwritten(
    directory: Path | None, lines: Sequence[bytes], error: str, log_file: Path, now: float
) -> Path | None:
    """The version log's last resort at shutdown: ``lines`` (its waiting entries, which the
    disk refused with ``error``) spilled to ``directory``, said at ERROR with the command that
    appends them back; without a directory, or when the spill fails too, each line logged
    whole at ERROR, in order, after ``unwritten entry:`` (for an operator to append to
    ``log_file``). Answers the spill file, if any."""
    kept: Path | None = None
    if directory is not None:
        try:
            kept = spill(directory, lines, now)
        except OSError as exc:
            log.error("version log: cannot keep the unwritten entries in %s: %s", directory, exc)
    if kept is not None:
        log.error("version log: %d entries could not be written at shutdown (%s); kept in %s: "
                  "append them with 'controlplane audit recover --data-dir <data dir> %s' once "
                  "the disk is repaired", len(lines), error, kept, kept)  # fmt: skip
        return kept
    log.error("version log: %d entries could not be written at shutdown (%s); each is logged "
              "next, in order, after 'unwritten entry:' (append them to %s)", len(lines),
              error, log_file)  # fmt: skip
    for line in lines:
        log.error("unwritten entry: %s", line.decode().rstrip("\n"))
    return None


def recover(audit_dir: Path, spilled: Path, now: float) -> Recovered:
    """Append the entries of the spill file ``spilled`` to the version log under
    ``audit_dir`` (module docstring); RecoverError, nothing appended, when one would not
    continue its chain, is there already, or is not an intact entry."""
    lines = [line + b"\n" for line in spilled.read_bytes().splitlines() if line.strip()]
    if not lines:
        raise RecoverError(f"{spilled}: no entries")
    scan = scan_files(audit_dir, repair=True)  # (a torn last line cut off first)
    stored: dict[str, dict[Any, dict[str, Any]]] = {}
    for found in scan.rows:
        stored.setdefault(str(found["session_id"]), {})[found.get("seq")] = found
    added: dict[str, list[dict[str, Any]]] = {}
    fresh: list[bytes] = []
    for number, line in enumerate(lines, start=1):
        try:
            row: Any = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("session_id"), str):
            raise RecoverError(f"{spilled}:{number}: not a log entry")
        sid = row["session_id"]
        there = stored.get(sid, {}).get(row.get("seq"))
        if there is not None and there.get("hash") == row.get("hash"):
            continue  # on disk already: a write whose fdatasync failed can still land
        if there is not None:
            raise RecoverError(f"{spilled}:{number}: session {sid} seq {row.get('seq')}: "
                               "the log holds another entry there: nothing appended")  # fmt: skip
        added.setdefault(sid, []).append(row)
        fresh.append(line)
    if not fresh:
        raise RecoverError(f"{spilled}: its {len(lines)} entries are in the log already "
                           "(recovered before?): nothing appended")  # fmt: skip
    for sid, rows in added.items():
        chain = list(stored.get(sid, {}).values()) + rows
        report = verify_entries(sid, chain)
        if not report.ok:
            raise RecoverError(f"{spilled}: session {sid}: the log with these entries would not "
                               f"verify ({report.problem}): nothing appended")  # fmt: skip
    today = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%d")
    day = max(today, scan.last_day or today)  # (file-name order is write order)
    audit_dir.mkdir(parents=True, exist_ok=True)
    path = audit_dir / f"{FILE_PREFIX}{day}{FILE_SUFFIX}"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        write_lines(fd, fresh)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    return Recovered(len(fresh), len(added), path, len(lines) - len(fresh))
