"""The JSONL file backend of the version log.

Layout: ``<directory>/versionlog-YYYY-MM-DD.jsonl``, one file per UTC day of the *flush*
(never going back to an earlier day, so file-name order is write order), every session in
the same files. One line per entry: the canonical JSON of the entry without ``hash`` with
``"hash":"<hex>"`` appended as its last member, so the hashed bytes are the line minus that
member (the Redis backend stores the same line). A write is one ``write`` of a batch of
lines plus one ``fdatasync`` on this log's single writer thread, so writes land in the order
they were started: ``submit()`` starts one without waiting (a fan-out pipelines its chunks
through it), ``flush()`` starts one for the rest and waits for all. A failed write is
truncated away so the retry never duplicates lines (where the truncate fails too, a read-only
file system, the retry cuts what of it reached the disk); the writes queued behind it are not
attempted, and all their entries go back to the buffer, in order. ``start()`` reads every
file to rebuild the tails, so chains continue across restarts (cost: one pass over all
files). A torn last line (a crash in the middle of a write, never acknowledged) is cut off,
saved next to the file as ``<file>.torn`` and reported in ``problems``. Readers skip (and
log) lines that are not JSON.

Checkpoints (``sessions.checkpoints``; on when a ``Checkpointing`` is given): every
``every_entries`` durable entries (but not sooner than ``min_gap_s`` after the previous one)
or ``interval_s`` seconds, and at ``close()``, a background
task signs the heads of the sessions changed since the previous checkpoint and appends the
records to ``checkpoints-YYYY-MM-DD.jsonl`` (write + ``fdatasync``), after their entries are
durable and never on the append or flush path. ``start()`` continues the checkpoint chain of
this node and key from the files and queues the heads of entries no checkpoint covers yet
(written just before a crash). The public key is published next to the files as
``signing-key-<key id prefix>.pub`` (PEM); the private key never comes here.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import datetime as dt
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from mypy_extensions import mypyc_attr

from sessions.audit_trail import TrailReport, verify_trail
from sessions.checkpoints import CheckpointSigner, make_checkpoints
from sessions.clock import Clock
from sessions.errors import BackendUnavailable, VersionLogError
from sessions.versionchain import GENESIS, LogEntry, VerifyReport
from sessions.versionlog.core import BufferedVersionLog, Pending, Submitted, parse_entries
from sessions.versionlog.jsonl import (
    CHECKPOINT_PREFIX,
    FILE_PREFIX,
    FILE_SUFFIX,
    append_checkpoint_lines,
    checkpoint_files,
    day_of_file,
    publish_public_key,
    read_checkpoint_rows,
    scan_files,
    write_lines,
)
from sessions.versionlog.spill import keep_unwritten

__all__ = ["Checkpointing", "FileVersionLog"]

# the logger this backend has always used (it lived in sessions.versionlog.core)
log = logging.getLogger("sessions.versionlog.core")


@dataclass(frozen=True, slots=True)
class Checkpointing:
    """Who signs checkpoints, as which node, and how often (module docstring)."""

    signer: CheckpointSigner
    node: str
    every_entries: int = 1000
    interval_s: float = 10.0
    min_gap_s: float = 0.0  # an entry-count checkpoint waits this long after the previous


class _Skipped(Exception):
    """A write not attempted because the one before it failed (retried after it, in order)."""


@dataclass(slots=True)
class _Submission:
    batch: list[Pending]
    day: str
    future: concurrent.futures.Future[None]


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # read by _drain from the thread's future; not reported twice


@mypyc_attr(allow_interpreted_subclasses=True)  # (compiled: tests derive fault-injecting logs)
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
        checkpointing: Checkpointing | None = None,
        spill_dir: Path | None = None,
    ) -> None:
        super().__init__(clock, flush_interval_s=flush_interval_s)
        self._dir = Path(directory)
        self._spill_dir = spill_dir  # where close() keeps what the disk would not take
        self._fsync = fsync
        self._loaded = False
        self._appendable = False  # (until start(): _check_appendable says why)
        self._day: str | None = None  # UTC day of the file being written
        self._fd: int | None = None
        self._size = 0  # of the open file (_write_sync: the one writer thread's, in order)
        self._known_end: tuple[str, int] | None = None  # (day, its file's end): _write_sync
        self._files_of: dict[str, set[str]] = {}  # session -> files holding its entries
        # writes started and not yet accounted for, oldest first (one writer thread: in order)
        self._submitted: collections.deque[_Submission] = collections.deque()
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._write_day: str | None = None  # UTC day of the newest write started
        self.problems: list[str] = []  # what start() found and repaired (torn lines)
        # checkpoints: heads of durable entries not yet committed, this node's chain
        self._ck = checkpointing
        self._ck_changed: dict[str, tuple[int, str]] = {}
        self._ck_since = 0
        self._ck_prev: tuple[int, str] = (0, GENESIS)
        self._ck_day: str | None = None
        self._ck_lock = asyncio.Lock()
        self._ck_due = asyncio.Event()
        self._ck_stopping = False
        self._ck_task: asyncio.Task[None] | None = None
        self.checkpoint_failures = 0

    async def start(self) -> None:
        if not self._loaded:
            scan = await asyncio.to_thread(scan_files, self._dir, repair=True)
            for row in scan.rows:
                self._tails[row["session_id"]] = (row["seq"], row["hash"])
            self._files_of = scan.files_of
            self.problems.extend(scan.problems)
            self._day = self._write_day = scan.last_day
            if self._ck is not None:
                await asyncio.to_thread(self._load_checkpoints, self._ck)
            self._loaded = True
            self._appendable = True
        await super().start()
        if self._ck is not None and self._ck_task is None:
            self._ck_stopping = False
            self._ck_task = asyncio.create_task(
                self._run_checkpoints(self._ck), name="FileVersionLog.checkpoints"
            )

    @property
    def pending(self) -> int:
        return len(self._buffer) + sum(len(s.batch) for s in self._submitted)

    def submit(self) -> Submitted:
        """Hand every entry appended so far to the writer thread and return at once (the
        write and its ``fdatasync`` run while the caller goes on); the future is done when
        they are durable, or failed. ``flush()`` accounts for it."""
        if not self._buffer:
            if self._submitted:
                return self._submitted[-1].future
            done: concurrent.futures.Future[None] = concurrent.futures.Future()
            done.set_result(None)
            return done
        batch, self._buffer = self._buffer, []
        day = dt.datetime.fromtimestamp(self._clock.now(), dt.UTC).strftime("%Y-%m-%d")
        if self._write_day is not None and day < self._write_day:
            day = self._write_day  # the clock went back: never write to an earlier file
        self._write_day = day
        lines = [item.line for item in batch]  # joined by the kernel (writev), off the loop
        before = self._submitted[-1].future if self._submitted else None
        if self._writer is None:
            self._writer = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="versionlog-writer"
            )
        future = self._writer.submit(self._write_after, before, day, lines)
        self._submitted.append(_Submission(batch, day, future))
        return future

    async def flush(self) -> None:
        """Write everything appended so far and wait for every write started before (raise,
        keeping the entries, on failure); then wait for a checkpoint being written: whoever
        reads the files after a flush (the shipper) never sees a record before its fsync."""
        async with self._lock:
            self.submit()
            await self._drain()
        if self._ck is not None and self._ck_lock.locked():
            async with self._ck_lock:
                pass

    async def close(self) -> None:
        """Stop the checkpoint task, then flush and write the last checkpoint (``close``).
        Entries the disk will not take (full, read-only, failing) go to ``spill_dir`` (a second
        disk; ``controlplane audit recover`` appends them) or, without one or when it fails
        too, are logged whole at ERROR, in order (``sessions.versionlog.spill``)."""
        task, self._ck_task = self._ck_task, None
        if task is not None:
            self._ck_stopping = True
            self._ck_due.set()
            await task
        try:
            await super().close()
        except BackendUnavailable as exc:
            await asyncio.to_thread(keep_unwritten, self._spill_dir, [i.line for i in self._buffer],
                                    str(exc), self._path(self._write_day or "<day>"),
                                    self._clock.now())  # fmt: skip
            self._buffer.clear()
            await self._close_storage()

    def _check_appendable(self) -> None:
        if not self._loaded:
            raise VersionLogError("FileVersionLog.start() must run before append()")

    async def _drain(self) -> None:
        """Account for every started write, oldest first: the successful ones' bookkeeping;
        the failed ones' entries (and those of the writes skipped behind them) back to the
        front of the buffer, in order, and the first failure raised. A cancelled caller
        leaves the rest queued for the next flush."""
        failed: list[Pending] = []
        error: BaseException | None = None
        accounted = False
        while self._submitted:
            head = self._submitted[0]
            if not head.future.done():
                waiter = asyncio.wrap_future(head.future)
                waiter.add_done_callback(_retrieve)
                await asyncio.wait([waiter])
                continue
            self._submitted.popleft()
            accounted = True
            exc = head.future.exception()
            if exc is None:
                self._written(head.batch, head.day)
            else:
                failed.extend(head.batch)
                error = error or exc
        if error is None:
            if accounted:
                self.write_failing_since = self.last_write_error = None
            return
        self._buffer[:0] = failed  # before anything appended since: order kept
        if self.write_failing_since is None:
            self.write_failing_since = self._clock.monotonic()
        self.last_write_error = str(error) or type(error).__name__
        if isinstance(error, OSError):
            problem = f"version log: write to {self._dir} failed: {error}"
            raise BackendUnavailable(problem) from error
        raise error

    def _write_after(
        self, before: concurrent.futures.Future[None] | None, day: str, lines: list[bytes]
    ) -> None:
        """On the writer thread (``before`` has finished: one thread, in order)."""
        if before is not None and (before.cancelled() or before.exception() is not None):
            raise _Skipped("not attempted: an earlier write failed")
        self._write_sync(day, lines)

    def _written(self, batch: list[Pending], day: str) -> None:
        name = self._path(day).name
        changed = self._ck_changed if self._ck is not None else None
        files_of, tails = self._files_of, self._tails
        for item in batch:
            sid = item.session_id
            files = files_of.get(sid)
            if files is None:
                files_of[sid] = {name}
            elif name not in files:
                files.add(name)
            if changed is not None:
                tail = tails.get(sid)
                if tail is not None and tail[1] is item.hash and tail[0] == item.seq:
                    changed[sid] = tail  # the very same head: shared, nothing new to collect
                else:
                    changed[sid] = (item.seq, item.hash)
        if self._ck is not None:
            self._ck_since += len(batch)
            if self._ck_since >= self._ck.every_entries:
                self._ck_due.set()

    def _path(self, day: str) -> Path:
        return self._dir / f"{FILE_PREFIX}{day}{FILE_SUFFIX}"

    def _write_sync(self, day: str, lines: list[bytes]) -> None:
        if self._fd is None or self._day != day:
            self._close_fd()
            path = self._path(day)
            created = not path.exists()
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            self._size = os.fstat(self._fd).st_size
            self._day = day
            if created and self._fsync:
                dir_fd = os.open(self._dir, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        fd, size = self._fd, self._size
        known = self._known_end  # beyond its end: a failed write's lines reached the disk
        if known is not None and known[0] == day and size > known[1]:
            log.warning("version log: cut %d bytes of a failed write", size - known[1])
            os.ftruncate(fd, known[1])  # (the retry below writes them once)
            self._size = size = known[1]
        # The file's size is tracked, not asked for per write: each system call made here
        # is one more hand-over of the GIL between this thread and the event loop in the
        # middle of a fan-out (docs/benchmarks.md, session 8). One writer thread appends.
        try:
            end = size + write_lines(fd, lines)
            if self._fsync:
                os.fdatasync(fd)
        except OSError:
            # read-only, the truncate fails and the lines may reach the disk all the same
            # (fdatasync says EIO once the journal aborted, even for a committed transaction)
            self._known_end = (day, size)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)  # no half batch on disk: the retry writes it whole
            self._close_fd()
            raise
        self._size, self._known_end = end, (day, end)

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    async def _close_storage(self) -> None:
        try:
            if self._ck is not None and self._loaded:
                await self.checkpoint()  # the last entries are covered before we stop
        except Exception as exc:
            log.warning("version log: last checkpoint not written: %s", exc)
        finally:
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.shutdown(wait=True)  # idle: close() flushed every write
            self._close_fd()

    # -- checkpoints (sessions.checkpoints) -----------------------------------------------
    async def _run_checkpoints(self, ck: Checkpointing) -> None:
        loop = asyncio.get_running_loop()
        gap = min(ck.min_gap_s, ck.interval_s)
        last = loop.time()
        while not self._ck_stopping:
            await self._ck_wait(ck.interval_s)
            # An entry-count trigger waits out the minimum gap since the previous checkpoint:
            # a burst (a fan-out and its acknowledgements) is signed once, its heads listed
            # once, not once per `every_entries` entries (the interval, never shorter than
            # the gap, has always passed it). A stop cuts the wait short.
            while not self._ck_stopping and (wait := last + gap - loop.time()) > 0:
                self._ck_due.clear()
                await self._ck_wait(wait)
            self._ck_due.clear()
            if self._ck_stopping:
                return
            last = loop.time()
            try:
                await self.checkpoint()
            except Exception as exc:  # the heads wait for the next attempt
                self.checkpoint_failures += 1
                log.warning("version log: checkpoint failed (%d heads waiting): %s",
                            len(self._ck_changed), exc)  # fmt: skip

    async def _ck_wait(self, timeout_s: float) -> None:
        """Until a checkpoint is asked for (entries past the count, or a stop), at most
        ``timeout_s`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._ck_due.wait()

    async def checkpoint(self) -> int:
        """Sign and write a checkpoint of every head changed since the last one (now, not
        waiting for the schedule); returns how many records were written."""
        ck = self._ck
        if ck is None:
            return 0
        async with self._ck_lock:
            if not self._ck_changed:
                return 0
            heads, self._ck_changed = self._ck_changed, {}
            since, self._ck_since = self._ck_since, 0
            now = float(self._clock.now())
            day = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%d")
            if self._ck_day is not None and day < self._ck_day:
                day = self._ck_day
            try:
                count, self._ck_prev = await asyncio.to_thread(
                    self._write_checkpoints, ck, heads, now, day
                )
            except BaseException:
                for sid, head in heads.items():  # a newer head appended meanwhile wins
                    self._ck_changed.setdefault(sid, head)
                self._ck_since += since
                raise
            self._ck_day = day
            return count

    def _write_checkpoints(
        self, ck: Checkpointing, heads: dict[str, tuple[int, str]], at: float, day: str
    ) -> tuple[int, tuple[int, str]]:
        lines, prev = make_checkpoints(ck.signer, node=ck.node, at=at, prev=self._ck_prev,
                                       heads=heads)  # fmt: skip
        path = self._dir / f"{CHECKPOINT_PREFIX}{day}{FILE_SUFFIX}"
        append_checkpoint_lines(path, lines, fsync=self._fsync)
        return len(lines), prev

    def _load_checkpoints(self, ck: Checkpointing) -> None:
        """Continue this node's chain; queue heads no checkpoint committed (worker thread)."""
        committed: dict[str, int] = {}
        for row in read_checkpoint_rows(self._dir, repair=True, problems=self.problems):
            heads = row.get("heads")
            mine = row.get("node") == ck.node and row.get("key_id") == ck.signer.key_id
            if mine and isinstance(row.get("seq"), int):  # a new key starts a new chain
                self._ck_prev = (int(row["seq"]), str(row.get("hash")))
            if isinstance(heads, dict):
                for sid, head in heads.items():
                    if isinstance(head, list) and head and isinstance(head[0], int):
                        committed[sid] = max(committed.get(sid, 0), head[0])
        files = checkpoint_files(self._dir)
        if files:
            self._ck_day = day_of_file(files[-1], CHECKPOINT_PREFIX)
        for sid, (seq, digest) in self._tails.items():
            if seq > committed.get(sid, 0):
                self._ck_changed[sid] = (seq, digest)
        self._ck_since = len(self._ck_changed)
        publish_public_key(self._dir, ck.signer)

    def forget(self, session_id: str) -> None:
        super().forget(session_id)
        self._files_of.pop(session_id, None)

    async def _rows(self, session_id: str | None) -> list[dict[str, Any]]:
        known = None if session_id is None else self._files_of.get(session_id)
        only = None if known is None else set(known)  # a copy: the worker thread reads it
        scan = await asyncio.to_thread(scan_files, self._dir, only=only)
        if session_id is None:
            return scan.rows
        return [row for row in scan.rows if row["session_id"] == session_id]

    async def entries(self, session_id: str) -> list[LogEntry]:
        await self.flush()
        return parse_entries(session_id, await self._rows(session_id))

    async def verify(self, session_id: str | None = None) -> list[VerifyReport]:
        """Chains, checked against the checkpoints' heads too (``verify_trail`` for all)."""
        return (await self.verify_trail(session_id)).sessions

    async def verify_trail(
        self,
        session_id: str | None = None,
        *,
        trusted: Sequence[Ed25519PublicKey] | None = None,
    ) -> TrailReport:
        """Every chain (or one) and every checkpoint; ``trusted`` pins the signing keys."""
        await self.flush()
        # checkpoints first: every entry a checkpoint read here commits to is already durable,
        # so the entries read next include it (no false "truncated" while writing goes on)
        checkpoints = await self.checkpoint_rows()
        grouped: dict[str, list[dict[str, Any]]] = {}
        if session_id is not None:
            grouped[session_id] = await self._rows(session_id)
        else:
            for sid in self._tails:  # a session whose every line was deleted still counts
                grouped[sid] = []
            for row in await self._rows(None):
                grouped.setdefault(row["session_id"], []).append(row)
        return verify_trail(grouped, checkpoints, trusted=trusted, tails=self._tails,
                            session_id=session_id)  # fmt: skip

    async def checkpoint_rows(self) -> list[dict[str, Any]]:
        """Every stored checkpoint record, in write order (``StoredTrail``)."""
        return await asyncio.to_thread(read_checkpoint_rows, self._dir)

    async def stored_rows(self, session_id: str | None = None) -> list[dict[str, Any]]:
        """The stored entries (of one session, or all) as read from the files."""
        await self.flush()
        return await self._rows(session_id)

    def tail(self, session_id: str) -> tuple[int, str] | None:
        return self._tails.get(session_id)

    async def session_ids(self) -> list[str]:
        await self.flush()
        return sorted({row["session_id"] for row in await self._rows(None)})
