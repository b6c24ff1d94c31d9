"""The JSONL file backend of the version log.

Layout: ``<directory>/versionlog-YYYY-MM-DD.jsonl``, one file per UTC day of the *flush*
(never going back to an earlier day, so file-name order is write order), every session in
the same files. One line per entry: the canonical JSON of the entry without ``hash`` with
``"hash":"<hex>"`` appended as its last member, so the hashed bytes are the line minus that
member (the Redis backend stores the same line). A flush is one ``write`` of all buffered
lines plus one ``fdatasync``, in a worker thread; a failed write is truncated away so the
retry never duplicates lines. ``start()`` reads every file to rebuild the tails, so chains
continue across restarts (cost: one pass over all files). A torn last line (a crash in the
middle of a write, never acknowledged) is cut off, saved next to the file as
``<file>.torn`` and reported in ``problems``. Readers skip (and log) lines that are not JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sessions.clock import Clock
from sessions.errors import BackendUnavailable, VersionLogError
from sessions.versionchain import LogEntry, VerifyReport, verify_entries
from sessions.versionlog import BufferedVersionLog, Pending, parse_entries

__all__ = ["FileVersionLog"]

# the logger this backend has always used (it lived in sessions.versionlog)
log = logging.getLogger("sessions.versionlog")

_FILE_PREFIX: Final = "versionlog-"
_FILE_SUFFIX: Final = ".jsonl"


@dataclass
class _Scan:
    rows: list[dict[str, Any]]
    files_of: dict[str, set[str]]
    problems: list[str]
    last_day: str | None = None


class FileVersionLog(BufferedVersionLog):
    """Append-only JSONL files under ``directory`` (layout in the module docstring).

    ``start()`` must run before ``append()`` (it rebuilds the tails). ``fsync=False`` skips
    the fdatasync (tests, or a disk you do not trust anyway).
    """

    def __init__(
        self,
        directory: Path,
        clock: Clock,
        *,
        fsync: bool = True,
        flush_interval_s: float | None = 0.05,
    ) -> None:
        super().__init__(clock, flush_interval_s=flush_interval_s)
        self._dir = Path(directory)
        self._fsync = fsync
        self._loaded = False
        self._day: str | None = None  # UTC day of the file being written
        self._fd: int | None = None
        self._files_of: dict[str, set[str]] = {}  # session -> files holding its entries
        self.problems: list[str] = []  # what start() found and repaired (torn lines)

    async def start(self) -> None:
        if not self._loaded:
            scan = await asyncio.to_thread(self._scan, repair=True)
            for row in scan.rows:
                self._tails[row["session_id"]] = (row["seq"], row["hash"])
            self._files_of = scan.files_of
            self.problems.extend(scan.problems)
            self._day = scan.last_day
            self._loaded = True
        await super().start()

    def _check_appendable(self) -> None:
        if not self._loaded:
            raise VersionLogError("FileVersionLog.start() must run before append()")

    def _files(self) -> list[Path]:
        if not self._dir.is_dir():
            return []
        return sorted(self._dir.glob(f"{_FILE_PREFIX}*{_FILE_SUFFIX}"))

    def _scan(self, *, repair: bool = False, only: set[str] | None = None) -> _Scan:
        """Read every file (or those named in ``only``) in write order; tolerant of bad lines."""
        if repair:
            self._dir.mkdir(parents=True, exist_ok=True)
        scan = _Scan([], {}, [])
        for path in self._files():
            scan.last_day = path.name[len(_FILE_PREFIX) : -len(_FILE_SUFFIX)]
            if only is not None and path.name not in only:
                continue
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1
                problem = f"{path.name}: torn last line ({len(data) - cut} bytes) at byte {cut}"
                if repair:  # cut it off so new lines start clean; keep the bytes for forensics
                    with path.with_name(path.name + ".torn").open("ab") as torn:
                        torn.write(data[cut:] + b"\n")
                    os.truncate(path, cut)
                    problem += f", moved to {path.name}.torn"
                scan.problems.append(problem)
                log.warning("version log: %s", problem)
                data = data[:cut]
            for number, line in enumerate(data.splitlines(), start=1):
                try:
                    row = json.loads(line)
                except ValueError:
                    row = None
                if not isinstance(row, dict) or not isinstance(row.get("session_id"), str):
                    scan.problems.append(f"{path.name}:{number}: not a log entry")
                    log.warning("version log: %s:%d: not a log entry", path.name, number)
                    continue
                scan.rows.append(row)
                scan.files_of.setdefault(row["session_id"], set()).add(path.name)
        return scan

    async def _write(self, batch: list[Pending]) -> None:
        day = dt.datetime.fromtimestamp(self._clock.now(), dt.UTC).strftime("%Y-%m-%d")
        if self._day is not None and day < self._day:
            day = self._day  # the clock went back: never write to an earlier file
        data = b"".join(item.line for item in batch)
        try:
            await asyncio.to_thread(self._write_sync, day, data)
        except OSError as exc:
            raise BackendUnavailable(f"version log: write to {self._dir} failed: {exc}") from exc
        name = self._path(day).name
        for item in batch:
            self._files_of.setdefault(item.entry.session_id, set()).add(name)

    def _path(self, day: str) -> Path:
        return self._dir / f"{_FILE_PREFIX}{day}{_FILE_SUFFIX}"

    def _write_sync(self, day: str, data: bytes) -> None:
        if self._fd is None or self._day != day:
            self._close_fd()
            path = self._path(day)
            created = not path.exists()
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            self._day = day
            if created and self._fsync:
                dir_fd = os.open(self._dir, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        fd = self._fd
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self._fsync:
                os.fdatasync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)  # no half batch on disk: the retry writes it whole
            self._close_fd()
            raise

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    async def _close_storage(self) -> None:
        self._close_fd()

    def forget(self, session_id: str) -> None:
        super().forget(session_id)
        self._files_of.pop(session_id, None)

    async def _rows(self, session_id: str | None) -> list[dict[str, Any]]:
        known = None if session_id is None else self._files_of.get(session_id)
        only = None if known is None else set(known)  # a copy: the worker thread reads it
        scan = await asyncio.to_thread(self._scan, only=only)
        if session_id is None:
            return scan.rows
        return [row for row in scan.rows if row["session_id"] == session_id]

    async def entries(self, session_id: str) -> list[LogEntry]:
        await self.flush()
        return parse_entries(session_id, await self._rows(session_id))

    async def verify(self, session_id: str | None = None) -> list[VerifyReport]:
        await self.flush()
        grouped: dict[str, list[dict[str, Any]]] = {}
        if session_id is not None:
            grouped[session_id] = await self._rows(session_id)
        else:
            for sid in self._tails:  # a session whose every line was deleted still counts
                grouped[sid] = []
            for row in await self._rows(None):
                grouped.setdefault(row["session_id"], []).append(row)
        return [
            verify_entries(sid, rows, tail=self._tails.get(sid))
            for sid, rows in sorted(grouped.items())
        ]

    async def session_ids(self) -> list[str]:
        await self.flush()
        return sorted({row["session_id"] for row in await self._rows(None)})
