"""Durable audit: ship the local version log to a remote stream (``CP_AUDIT``), never losing
an entry (DESIGN.md §6: write locally first, then ship).

The local JSONL ``FileVersionLog`` stays the write-ahead log: the push path appends to it and
its group commit makes entries durable (``write`` + ``fdatasync``). ``AuditShipper`` tails its
files like a log shipper, off the critical path:

1. ``flush()`` the local log, then take the files' sizes at once (no await in between): those
   bytes are durable, so nothing the disk could still lose is ever shipped;
2. read the complete lines after a persisted cursor (``file``, byte ``offset``; a chunk of at
   most ``READ_BYTES``), hand them to an ``AuditTransport`` in one call (each line with its
   position ``<file>:<offset>``: ``CP_AUDIT`` stores them as a few batch messages keyed by
   that position, ``controlplane.audit.batches``), and move the cursor only after the whole
   chunk is acknowledged;
3. on failure keep the cursor, count ``audit_append_failures_total`` (entries per failed
   attempt), back off and retry; the backlog is the unshipped bytes on disk
   (``controlplane_audit_ship_backlog_bytes``), bounded by the data volume, never dropped.

Pacing (issue #23: one pass per publish and replica, whatever the sessions): a pass runs every
``interval_s`` while the log grows slowly (a few sessions' entries ship at the next interval).
A tick that sees the entry files grow by ``SHIP_BURST_BYTES`` or more starts a burst (a
fan-out writing its ``sent`` entries, then their acknowledgements): no pass until
``SHIP_QUIET_TICKS`` ticks in a row see the log not grow at all, or ``SHIP_MAX_DELAY_S`` after
the burst began. So a fan-out ships in one pass (one fence question, one batch message) once
it is written, not one per interval while it lasts. The bound: 3 s is twice what a
10,000-session fan-out and its acknowledgements take on a 2-core machine (docs/benchmarks.md),
well under the checkpoint interval (10 s); the entries are durable locally (``fdatasync``)
before, so it only delays the remote copy.

A crash between an acknowledged chunk and the cursor write re-ships at most that chunk; the
transport deduplicates by key and readers drop exact duplicates
(``controlplane.audit.reader.dedupe``).

Fencing (distributed mode): one session's trail has one writer, the node holding the id's
claim in the registry (``sessions.registry``). A pass asks an ``AuditFence`` once which of its
sessions another node holds (ids already answered in the pass are not asked again: one
question per pass, issue #23, the Redis work of a publish); their lines are withheld
(kept in the local log, counted in ``audit_fenced_total``, logged), so two nodes never
interleave two chains in one trail.
The file layout it tails (``versionlog-YYYY-MM-DD.jsonl``, name order = write order, one
canonical JSON entry per line) is the one documented in ``sessions.versionlog.file``.

Signed checkpoints (``checkpoints-YYYY-MM-DD.jsonl`` next to them, ``sessions.checkpoints``)
are shipped the same way with a cursor of their own, after the entries of the same pass: their
sizes are taken before the entries' sizes, so a shipped checkpoint never commits to an entry
that is not shipped yet. A checkpoint line is an ``AuditLine`` with ``node`` set. The loop's
passes ship checkpoints at most every ``CHECKPOINT_SHIP_S`` (the writer's default checkpoint
interval): one checkpoint batch per replica per 10 s, however many checkpoints the entries
count triggered (one per 1,000 entries: a 10,000-session publish makes ~7 per replica);
``ship_pending()`` and ``close`` ship everything.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from controlplane.metrics import Metrics
from controlplane.tasks import raise_if_cancelled, stop_task
from sessions.clock import Clock, SystemClock
from sessions.errors import BackendUnavailable

__all__ = ["AuditFence", "AuditLine", "AuditShipper", "AuditTransport", "ShipPacer"]

log = logging.getLogger(__name__)

FILE_GLOB: Final = "versionlog-*.jsonl"
CHECKPOINT_GLOB: Final = "checkpoints-*.jsonl"
READ_BYTES: Final = 16 * 1024 * 1024  # one chunk holds a 10,000-session fan-out's entries
RETRY_MAX_S: Final = 2.0
SHIP_MAX_DELAY_S: Final = 3.0  # a log that keeps growing is still shipped this often
SHIP_BURST_BYTES: Final = 16 * 1024  # growth per tick that counts as a fan-out in progress
SHIP_QUIET_TICKS: Final = 2  # ticks without growth that end a burst
CHECKPOINT_SHIP_S: Final = 10.0  # the loop ships checkpoints at most this often (their interval)
FENCED_KEPT: Final = 10_000


@dataclass(frozen=True, slots=True)
class AuditLine:
    """One version-log entry as stored locally (``data`` without the newline); or, with
    ``node`` set, one signed checkpoint of that node (``seq`` its checkpoint seq)."""

    session_id: str
    seq: int
    data: bytes
    node: str | None = None
    origin: str = ""  # where it starts in the writer's log: "<file>:<byte offset>"


class AuditTransport(Protocol):
    async def ship(self, lines: Sequence[AuditLine]) -> None:
        """Store every line durably or raise (the batch is retried whole)."""
        ...


class AuditFence(Protocol):
    async def foreign(self, session_ids: Collection[str]) -> set[str]:
        """The ids among these whose trail another node holds (their lines are withheld)."""
        ...


class ShipPacer:
    """When a pass is due (module docstring, pacing): ``due(size, now)`` is told the local
    entry files' total size at each tick. A tick that sees the log grow by ``burst_bytes`` or
    more starts a burst (a fan-out writing its entries); during a burst no pass is due until
    ``quiet_ticks`` ticks in a row see the log not grow at all (the fan-out and its
    acknowledgements are written; one group commit under load can stall the log for a tick),
    or ``max_delay_s`` after the burst began. Without a burst a pass is due at every tick (a
    few sessions' entries ship at once, as without pacing)."""

    def __init__(
        self,
        max_delay_s: float = SHIP_MAX_DELAY_S,
        burst_bytes: int = SHIP_BURST_BYTES,
        quiet_ticks: int = SHIP_QUIET_TICKS,
    ) -> None:
        self._max_delay_s = max_delay_s
        self._burst = burst_bytes
        self._quiet_ticks = quiet_ticks
        self._seen = 0
        self._quiet = 0
        self._burst_since: float | None = None

    def due(self, size: int, now: float) -> bool:
        grew, self._seen = size - self._seen, size
        if grew >= self._burst and self._burst_since is None:
            self._burst_since = now
        if self._burst_since is None:
            return True
        self._quiet = 0 if grew > 0 else self._quiet + 1
        if self._quiet < self._quiet_ticks and now - self._burst_since < self._max_delay_s:
            return False
        self._burst_since, self._quiet = None, 0
        return True


@dataclass
class _Cursor:
    file: str | None = None  # the file being shipped (None: start at the first file)
    offset: int = 0


class AuditShipper:
    """Tails the local version-log files into an ``AuditTransport`` (module docstring)."""

    def __init__(
        self,
        directory: Path,
        cursor_path: Path,
        transport: AuditTransport,
        *,
        flush: Callable[[], Awaitable[None]],
        metrics: Metrics,
        interval_s: float = 0.2,
        batch_lines: int | None = None,
        clock: Clock | None = None,
        fence: AuditFence | None = None,
    ) -> None:
        self._clock = clock or SystemClock()
        self._fence = fence
        self.fenced: set[str] = set()  # session ids whose lines were withheld (bounded)
        self._dir = directory
        self._cursor_path = cursor_path
        self._transport = transport
        self._flush = flush
        self._metrics = metrics
        self._interval = interval_s
        self._batch = batch_lines  # lines per transport call (None: a whole chunk)
        self._cursor = _Cursor()
        self._disk_warned = False  # said once that the local disk fails while shipping
        self._ck_cursor = _Cursor()  # the checkpoint files' own cursor
        self._ck_shipped_at = -math.inf  # clock.monotonic() when checkpoints last shipped
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.shipped = 0
        self.backlog_bytes = 0
        self.healthy = True  # the last attempt succeeded
        self.failing_since: float | None = None  # clock.monotonic() of the first failed pass

    async def start(self) -> None:
        self._cursor, self._ck_cursor = await asyncio.to_thread(self._load_cursor)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="audit-shipper")

    async def close(self, *, final_timeout_s: float = 5.0) -> None:
        """Stop the loop, then one last bounded pass (after the local log's final flush)."""
        task, self._task = self._task, None
        if task is None:
            return  # never started: nothing of ours to finish
        await stop_task(task)
        try:
            async with asyncio.timeout(final_timeout_s):
                await self.ship_pending()
        except Exception as exc:
            log.warning("audit: %d bytes not shipped at shutdown (kept on disk, shipped at "
                        "the next start): %s", self.backlog_bytes, exc)  # fmt: skip

    async def _run(self) -> None:
        delay = self._interval
        pacer = ShipPacer()
        while True:
            await asyncio.sleep(delay)
            retrying = delay != self._interval
            if not pacer.due(self._local_size(), self._clock.monotonic()) and not retrying:
                continue
            try:
                await self.ship_pending(paced=True)
            except Exception as exc:
                raise_if_cancelled()
                if self.failing_since is None:
                    self.failing_since = self._clock.monotonic()
                first = delay == self._interval  # say it once per outage, then quietly
                delay = min(max(delay * 2, 0.5), RETRY_MAX_S)
                log.log(logging.WARNING if first else logging.DEBUG,
                        "audit shipping failed (%d bytes waiting, kept on disk), retrying: %s",
                        self.backlog_bytes, exc)  # fmt: skip
            else:
                self.failing_since = None
                if delay != self._interval:
                    log.info("audit shipping resumed (%d entries shipped so far)", self.shipped)
                delay = self._interval
            raise_if_cancelled()  # a stop that landed in the pass and was eaten there

    async def ship_pending(self, *, paced: bool = False) -> int:
        """Ship every durable entry (and checkpoint) not shipped yet; returns how many were
        shipped. ``paced`` (the loop): checkpoints at most every ``CHECKPOINT_SHIP_S``
        (module docstring)."""
        async with self._lock:
            try:
                await self._flush()
                self._disk_warned = False
            except BackendUnavailable as exc:
                # the local disk fails (full, read-only, I/O errors): what its files hold was
                # written by writes that succeeded (fdatasync'd; a failed write is cut off and
                # every write was accounted for by this flush), so it ships all the same —
                # the remote copy matters most while the local disk is failing
                self._disk_failing(exc)
            # right after the flush, before anything awaits; checkpoints first (docstring)
            ck_sizes = self._durable_sizes(CHECKPOINT_GLOB, self._ck_cursor)
            sizes = self._durable_sizes(FILE_GLOB, self._cursor)
            shipped = 0
            known: dict[str, bool] = {}  # the fence's answers of this pass: asked once per id
            try:
                shipped += await self._ship_files(sizes, known, checkpoints=False)
                if not paced or self._checkpoints_due(ck_sizes):
                    count = await self._ship_files(ck_sizes, known, checkpoints=True)
                    if count:
                        self._ck_shipped_at = self._clock.monotonic()
                    shipped += count
            finally:
                self._update_backlog(sizes, ck_sizes)
            self.healthy = True
            return shipped

    async def _ship_files(
        self, sizes: Mapping[str, int], known: dict[str, bool], *, checkpoints: bool
    ) -> int:
        shipped = 0
        while True:
            cursor = self._ck_cursor if checkpoints else self._cursor
            chunk = await asyncio.to_thread(self._read, sizes, cursor)
            if chunk is None:
                return shipped
            name, end, read = chunk
            lines: Sequence[AuditLine] = read
            if self._fence is not None and lines:  # asked once per pass, not per chunk
                lines = await self._fenced(lines, known)
            step = self._batch or max(1, len(lines))
            for i in range(0, len(lines), step):
                part = lines[i : i + step]
                await self._ship(part)
                shipped += len(part)
            if checkpoints:
                self._ck_cursor = _Cursor(name, end)
            else:
                self._cursor = _Cursor(name, end)
            try:
                await asyncio.to_thread(self._save_cursor)
            except OSError as exc:  # the disk: the cursor goes on in memory (a restart
                self._disk_failing(exc)  # re-ships from the last saved one: deduplicated)

    def _disk_failing(self, exc: Exception) -> None:
        if not self._disk_warned:
            log.warning("audit shipping goes on from what the local disk holds (the local "
                        "disk is failing: %s)", exc)  # fmt: skip
        self._disk_warned = True

    async def _ship(self, lines: Sequence[AuditLine]) -> None:
        try:
            await self._transport.ship(lines)
        except Exception:
            self.healthy = False
            self._metrics.audit_append_failures.inc(len(lines))
            raise
        self.shipped += len(lines)
        self._metrics.audit_shipped.inc(len(lines))

    async def _fenced(
        self, lines: Sequence[AuditLine], known: dict[str, bool]
    ) -> Sequence[AuditLine]:
        """The lines this node may ship: those of sessions another node holds are withheld.
        ``known``: the answers already had in this pass (a pass asks about an id once)."""
        assert self._fence is not None
        ask = {ln.session_id for ln in lines if ln.node is None} - known.keys()
        if ask:
            try:
                answer = await self._fence.foreign(ask)
            except Exception:
                self.healthy = False
                raise  # the chunk is retried whole, as for a transport failure
            known.update((sid, sid in answer) for sid in ask)
        foreign = {ln.session_id for ln in lines if ln.node is None and known[ln.session_id]}
        if not foreign:
            return lines
        withheld = [ln for ln in lines if ln.node is None and ln.session_id in foreign]
        self._metrics.audit_fenced.inc(len(withheld))
        new = foreign - self.fenced
        if new:
            log.error("audit: %d entries of session(s) %s not shipped: another node holds "
                      "their trail (they stay in the local log)", len(withheld),
                      ", ".join(sorted(new)[:20]))  # fmt: skip
            if len(self.fenced) < FENCED_KEPT:
                self.fenced |= new
        return [ln for ln in lines if ln.node is not None or ln.session_id not in foreign]

    def _local_size(self) -> int:
        """Total size of the entry files not fully shipped yet (a few ``stat`` calls)."""
        return sum(self._durable_sizes(FILE_GLOB, self._cursor).values())

    def _checkpoints_due(self, ck_sizes: Mapping[str, int]) -> bool:
        """Unshipped checkpoints, and none shipped for ``CHECKPOINT_SHIP_S``."""
        if not _unshipped(self._ck_cursor, ck_sizes):
            return False
        return self._clock.monotonic() - self._ck_shipped_at >= CHECKPOINT_SHIP_S

    # -- files (worker thread) -----------------------------------------------------------
    def _durable_sizes(self, glob: str, cursor: _Cursor) -> dict[str, int]:
        """Sizes of the files not fully shipped yet (the cursor's file and later ones)."""
        if not self._dir.is_dir():
            return {}
        first = cursor.file or ""
        names = sorted(p.name for p in self._dir.glob(glob))
        return {n: (self._dir / n).stat().st_size for n in names if n >= first}

    def _read(
        self, sizes: Mapping[str, int], cur: _Cursor
    ) -> tuple[str, int, list[AuditLine]] | None:
        """The next complete lines after the cursor (at most READ_BYTES), or None when done.
        The cursor moves on to the next file once a file is shipped to its durable size."""
        for name in sorted(sizes):
            if cur.file is not None and name < cur.file:
                continue
            start = cur.offset if name == cur.file else 0
            size = sizes[name]
            if start >= size:
                continue
            with (self._dir / name).open("rb") as fh:
                fh.seek(start)
                data = fh.read(min(size - start, READ_BYTES))
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                if len(data) < READ_BYTES:
                    return None  # a line still being written (cannot happen after a flush)
                raise ValueError(f"{name}: line longer than {READ_BYTES} bytes at {start}")
            return name, start + cut, self._parse(name, start, data[:cut])
        return None

    @staticmethod
    def _parse(name: str, start: int, data: bytes) -> list[AuditLine]:
        lines = []
        at = start
        for raw in data.split(b"\n")[:-1]:  # complete lines only (data ends with one)
            origin, at = f"{name}:{at}", at + len(raw) + 1
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
                if row.get("type") == "checkpoint":
                    lines.append(AuditLine("", int(row["seq"]), raw, node=str(row["node"]),
                                           origin=origin))  # fmt: skip
                else:
                    lines.append(AuditLine(str(row["session_id"]), int(row["seq"]), raw,
                                           origin=origin))  # fmt: skip
            except (ValueError, KeyError, TypeError, AttributeError):
                log.warning("audit: %s (from byte %d): skipping a line that is not an entry",
                            name, start)  # fmt: skip
        return lines

    def _update_backlog(self, sizes: Mapping[str, int], ck_sizes: Mapping[str, int]) -> None:
        backlog = _unshipped(self._cursor, sizes) + _unshipped(self._ck_cursor, ck_sizes)
        self.backlog_bytes = backlog
        self._metrics.audit_ship_backlog.set(backlog)

    def _load_cursor(self) -> tuple[_Cursor, _Cursor]:
        try:
            raw = json.loads(self._cursor_path.read_text(encoding="utf-8"))
            ck = raw.get("checkpoints") or {}  # absent in cursors written before checkpoints
            name = raw["file"]
            return _Cursor(None if name is None else str(name), int(raw["offset"])), _Cursor(
                None if ck.get("file") is None else str(ck["file"]), int(ck.get("offset", 0))
            )
        except FileNotFoundError:
            return _Cursor(), _Cursor()
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("audit: cursor %s unreadable (%s); shipping from the first file "
                        "(duplicates are dropped by key)", self._cursor_path, exc)  # fmt: skip
            return _Cursor(), _Cursor()

    def _save_cursor(self) -> None:
        tmp = self._cursor_path.with_name(self._cursor_path.name + ".tmp")
        self._cursor_path.parent.mkdir(parents=True, exist_ok=True)
        ck = self._ck_cursor
        body = {
            "file": self._cursor.file,
            "offset": self._cursor.offset,
            "checkpoints": {"file": ck.file, "offset": ck.offset},
        }
        tmp.write_text(json.dumps(body), encoding="utf-8")
        os.replace(tmp, self._cursor_path)


def _unshipped(cur: _Cursor, sizes: Mapping[str, int]) -> int:
    """Bytes of these files after the cursor."""
    backlog = 0
    for name, size in sizes.items():
        if cur.file is None or name > cur.file:
            backlog += size
        elif name == cur.file:
            backlog += max(0, size - cur.offset)
    return backlog
