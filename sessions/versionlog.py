"""The per-session version log: hash chain, verification, and the memory and file backends.

Every config version a session receives (and every status change of it) is one append-only
``LogEntry`` (DESIGN §4 plus ``version``). Entries of a session form a chain::

    hash = sha256(prev_hash + canonical_json(entry without "hash"))   # hex digests
    prev_hash of seq 1 = "0" * 64;  seq = 1, 2, 3, ... per session

``append()`` is synchronous: it chains the entry from an in-memory tail per session and
buffers the write, so the push hot path never awaits I/O. ``flush()`` makes everything
appended so far durable in one batch (group commit); on failure it raises and keeps the batch
for the next attempt, and a flush that is cancelled still finishes its write. ``start()``
runs a background flusher (every ``flush_interval_s``); ``close()`` stops it and flushes.

``FileVersionLog`` layout: ``<directory>/versionlog-YYYY-MM-DD.jsonl``, one file per UTC day
of the *flush* (never going back to an earlier day, so file-name order is write order),
every session in the same files. One line per entry: the canonical JSON of the entry without
``hash`` with ``"hash":"<hex>"`` appended as its last member, so the hashed bytes are the line
minus that member (the Redis backend stores the same line). A flush is one ``write`` of all
buffered lines plus one ``fdatasync``, in a worker thread; a failed write is truncated away
so the retry never duplicates lines. ``start()`` reads every file to rebuild the tails, so
chains continue across restarts (cost: one pass over all files). A torn last line (a crash
in the middle of a write, never acknowledged) is cut off, saved next to the file as
``<file>.torn`` and reported in ``problems``. Readers skip (and log) lines that are not JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final, Protocol

from policies.provenance import PolicyRef
from sessions.clock import Clock
from sessions.errors import BackendUnavailable, VersionLogError

__all__ = [
    "CAUSES",
    "GENESIS",
    "STATUSES",
    "BufferedVersionLog",
    "FileVersionLog",
    "LogEntry",
    "MemoryVersionLog",
    "Pending",
    "VerifyReport",
    "VersionLog",
    "canonical_json",
    "config_hash",
    "parse_entries",
    "reseal",
    "verify_entries",
]

log = logging.getLogger(__name__)

GENESIS: Final = "0" * 64
CAUSES: Final = ("connect", "policy", "relabel", "client", "rollback", "retire")
STATUSES: Final = ("sent", "acked", "rejected", "skipped", "unverified")
_CAUSE_SET: Final = frozenset(CAUSES)
_STATUS_SET: Final = frozenset(STATUSES)

_encode_canonical = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8, tuples as lists, no NaN/Infinity."""
    return _encode_canonical(obj).encode()


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical JSON of an effective config."""
    return hashlib.sha256(canonical_json(config)).hexdigest()


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One version log entry (DESIGN §4 plus ``version``). JSON-native values throughout."""

    seq: int
    at: float
    session_id: str
    version: int
    cause: str
    policies: tuple[dict[str, Any], ...]  # {"id", "version", "variant"}
    delta: dict[str, Any] | None  # canonical delta; a None value unsets the field
    wire: dict[str, Any] | None  # the exact message sent, if one was
    status: str
    error: str | None
    config_hash: str
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["policies"] = list(self.policies)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> LogEntry:
        try:
            return cls(
                seq=int(raw["seq"]),
                at=float(raw["at"]),
                session_id=str(raw["session_id"]),
                version=int(raw["version"]),
                cause=str(raw["cause"]),
                policies=tuple(dict(p) for p in raw["policies"]),
                delta=None if raw["delta"] is None else dict(raw["delta"]),
                wire=None if raw["wire"] is None else dict(raw["wire"]),
                status=str(raw["status"]),
                error=None if raw["error"] is None else str(raw["error"]),
                config_hash=str(raw["config_hash"]),
                prev_hash=str(raw["prev_hash"]),
                hash=str(raw["hash"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise VersionLogError(f"malformed log entry: {exc!r}") from exc


_ENTRY_KEYS: Final = frozenset(f.name for f in fields(LogEntry))


def _seal(body: dict[str, Any]) -> tuple[LogEntry, bytes]:
    """Hash a chained body (every field but ``hash``); returns the entry and its JSONL line."""
    hashed = canonical_json(body)
    digest = hashlib.sha256(body["prev_hash"].encode() + hashed).hexdigest()
    body["hash"] = digest
    body["policies"] = tuple(body["policies"])
    return LogEntry(**body), b'%s,"hash":"%s"}\n' % (hashed[:-1], digest.encode())


def _hash_of(row: Mapping[str, Any]) -> str | None:
    try:
        body = {k: v for k, v in row.items() if k != "hash"}
        return hashlib.sha256(str(row["prev_hash"]).encode() + canonical_json(body)).hexdigest()
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Result of checking one session's chain. ``kind`` is edited, deleted, inserted,
    reordered, truncated or malformed; ``problem`` starts with it and names the seqs."""

    ok: bool
    session_id: str
    count: int
    first_bad_seq: int | None = None
    problem: str | None = None
    kind: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class _Row:
    seq: int
    prev: str
    hash: str
    session_id: str
    intact: bool  # its content matches its own hash
    wellformed: bool = True


_MALFORMED: Final = _Row(-1, "", "", "", intact=False, wellformed=False)


def _row(raw: Any) -> _Row:
    if not isinstance(raw, Mapping) or not raw.keys() >= _ENTRY_KEYS:
        return _MALFORMED
    seq, prev, digest, sid = raw["seq"], raw["prev_hash"], raw["hash"], raw["session_id"]
    if type(seq) is not int or not all(isinstance(v, str) for v in (prev, digest, sid)):
        return _MALFORMED
    return _Row(seq, prev, digest, sid, _hash_of(raw) == digest)


def verify_entries(
    session_id: str,
    entries: Sequence[Mapping[str, Any]],
    *,
    tail: tuple[int, str] | None = None,
) -> VerifyReport:
    """Check one session's stored entries (in stored order) against the hash chain.

    The genuine chain is rebuilt by following hash links from the genesis hash (intact
    entries only); the first stored position that disagrees with it is classified. ``tail``
    (seq, hash) is what the writer last appended, if known: it also catches deletion of the
    newest entries, which a chain alone cannot see.
    """
    rows = [_row(raw) for raw in entries]
    count = len(rows)

    def bad(kind: str, seq: int, text: str) -> VerifyReport:
        return VerifyReport(False, session_id, count, seq, f"{kind}: {text}", kind)

    links: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if row.intact and row.session_id == session_id:
            links.setdefault(row.prev, []).append(i)

    def successors(digest: str, seq: int) -> list[int]:
        return [i for i in links.get(digest, ()) if rows[i].seq == seq]

    def continues(i: int) -> bool:
        return bool(successors(rows[i].hash, rows[i].seq + 1))

    chain: list[int] = []
    digest = GENESIS
    while candidates := successors(digest, len(chain) + 1):
        # a fork means an inserted twin: prefer the candidate the rest of the chain follows
        best = min(candidates, key=lambda i: (not continues(i), i))
        chain.append(best)
        digest = rows[best].hash
    in_chain = set(chain)
    chain_seqs = range(1, len(chain) + 1)

    for pos, row in enumerate(rows):
        if pos < len(chain) and chain[pos] == pos:
            continue
        expected = pos + 1
        if not row.wellformed:
            return bad("malformed", expected, f"entry at position {expected} is not a log entry")
        if row.session_id != session_id:
            return bad("inserted", row.seq, f"seq {row.seq} belongs to {row.session_id!r}")
        if pos in in_chain:
            return bad("reordered", expected, f"seq {expected} is stored after seq {row.seq}")
        if row.seq in chain_seqs:  # the chain already has this seq: this one is a twin
            return bad("inserted", row.seq, f"a second entry with seq {row.seq}")
        if not row.intact:
            claims = "" if row.seq == expected else f" (it claims seq {row.seq})"
            return bad("edited", expected, f"seq {expected} does not match its hash{claims}")
        if row.seq == expected:
            if pos == 0:
                return bad("edited", 1, "seq 1 does not start from the genesis hash")
            return bad(
                "edited",
                pos,
                f"seq {pos} was changed and re-hashed (seq {expected}'s prev_hash differs)",
            )
        if row.seq > expected and len(chain) > pos:
            return bad("inserted", row.seq, f"unexpected seq {row.seq} before seq {expected}")
        if row.seq > expected:
            gap = _seqs(expected, row.seq - 1)
            return bad("deleted", expected, f"{gap} missing before seq {row.seq}")
        return bad("inserted", row.seq, f"unexpected seq {row.seq} after seq {pos}")
    if tail is not None:
        last_seq, last_hash = tail
        if count < last_seq:
            return bad("truncated", count + 1, f"{_seqs(count + 1, last_seq)} missing at the end")
        if count == last_seq and count and rows[-1].hash != last_hash:
            return bad("edited", count, f"seq {count} differs from what was appended")
    return VerifyReport(True, session_id, count)


def _seqs(first: int, last: int) -> str:
    return f"seq {first}" if first == last else f"seqs {first}-{last}"


class VersionLog(Protocol):
    def append(
        self,
        session_id: str,
        *,
        version: int,
        cause: str,
        policies: Iterable[PolicyRef | Mapping[str, Any]] = (),
        delta: Mapping[str, Any] | None = None,
        wire: Mapping[str, Any] | None = None,
        status: str,
        error: str | None = None,
        config: Mapping[str, Any],
    ) -> LogEntry: ...

    @property
    def pending(self) -> int: ...

    async def flush(self) -> None: ...

    async def entries(self, session_id: str) -> list[LogEntry]: ...

    async def verify(self, session_id: str | None = None) -> list[VerifyReport]: ...

    async def session_ids(self) -> list[str]: ...

    async def prepare(self, session_ids: Iterable[str]) -> None: ...

    def forget(self, session_id: str) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class Pending:
    """An appended entry waiting for the next flush, with its serialized line."""

    entry: LogEntry
    line: bytes  # canonical JSON + "\n"


_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any) -> Any:
    """A JSON-native deep copy: tuples become lists, mappings dicts (hot path: kept lean)."""
    if type(value) in _SCALARS:
        return value
    if isinstance(value, list | tuple):
        return [v if type(v) in _SCALARS else _plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): v if type(v) in _SCALARS else _plain(v) for k, v in value.items()}
    for base in (str, int, float):  # subclasses (StrEnum, IntEnum): store the plain value
        if isinstance(value, base):
            return base(value)
    raise TypeError(f"not JSON-able in a log entry: {type(value).__name__}")


def _policy(ref: PolicyRef | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(ref, PolicyRef):
        return ref.as_dict()
    return {"id": str(ref["id"]), "version": int(ref["version"]), "variant": ref.get("variant")}


def reseal(items: Iterable[Pending], session_id: str, tail: tuple[int, str]) -> tuple[int, str]:
    """Re-chain the pending entries of one session onto ``tail``; returns the new tail."""
    seq, digest = tail
    for item in items:
        if item.entry.session_id == session_id:
            body = item.entry.to_dict()
            del body["hash"]
            seq += 1
            body["seq"], body["prev_hash"] = seq, digest
            item.entry, item.line = _seal(body)
            digest = item.entry.hash
    return seq, digest


class BufferedVersionLog:
    """Chaining, buffering, group commit and the background flusher; backends add storage."""

    def __init__(self, clock: Clock, *, flush_interval_s: float | None = 0.05) -> None:
        self._clock = clock
        self._interval = flush_interval_s
        self._tails: dict[str, tuple[int, str]] = {}  # session -> (seq, hash) of last append
        self._buffer: list[Pending] = []
        self._lock = asyncio.Lock()
        self._inflight: asyncio.Task[None] | None = None
        self._inflight_batch: list[Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.flush_failures = 0

    def append(
        self,
        session_id: str,
        *,
        version: int,
        cause: str,
        policies: Iterable[PolicyRef | Mapping[str, Any]] = (),
        delta: Mapping[str, Any] | None = None,
        wire: Mapping[str, Any] | None = None,
        status: str,
        error: str | None = None,
        config: Mapping[str, Any],
    ) -> LogEntry:
        """Chain and buffer one entry (no I/O); it is durable after the next ``flush()``."""
        if cause not in _CAUSE_SET:
            raise ValueError(f"unknown cause {cause!r} (known: {', '.join(CAUSES)})")
        if status not in _STATUS_SET:
            raise ValueError(f"unknown status {status!r} (known: {', '.join(STATUSES)})")
        self._check_appendable()
        seq, prev = self._tails.get(session_id, (0, GENESIS))
        entry, line = _seal(
            {
                "at": float(self._clock.now()),
                "cause": cause,
                "config_hash": config_hash(config),
                "delta": None if delta is None else _plain(delta),
                "error": error,
                "policies": [_policy(p) for p in policies],
                "prev_hash": prev,
                "seq": seq + 1,
                "session_id": session_id,
                "status": status,
                "version": int(version),
                "wire": None if wire is None else _plain(wire),
            }
        )
        self._tails[session_id] = (entry.seq, entry.hash)
        self._buffer.append(Pending(entry, line))
        return entry

    @property
    def pending(self) -> int:
        """Entries appended but not yet durable."""
        return len(self._buffer) + (len(self._inflight_batch) if self._inflight else 0)

    async def flush(self) -> None:
        """Write everything appended so far in one batch; raise (keeping it) on failure."""
        async with self._lock:
            await self._settle()
            if not self._buffer:
                return
            batch, self._buffer = self._buffer, []
            self._inflight_batch = batch
            task = asyncio.create_task(self._commit(batch), name=f"{type(self).__name__}.commit")
            task.add_done_callback(_consume)
            self._inflight = task
            # shielded: a cancelled flush still finishes its write (no loss, no duplicates)
            await asyncio.shield(task)
            self._inflight = None

    async def _settle(self) -> None:
        """Wait for a write that a cancelled flush left running (it requeues on failure)."""
        task = self._inflight
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(task)
            self._inflight = None

    async def _commit(self, batch: list[Pending]) -> None:
        try:
            await self._write(batch)
        except BaseException:
            self._buffer[:0] = batch  # keep order: the failed batch goes before newer appends
            raise
        finally:
            self._inflight_batch = []

    async def start(self) -> None:
        """Start the background flusher (owned; stopped by ``close()``)."""
        if self._flusher is None and self._interval is not None:
            self._stopping.clear()
            self._flusher = asyncio.create_task(
                self._run_flusher(self._interval), name=f"{type(self).__name__}.flusher"
            )

    async def _run_flusher(self, interval: float) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._stopping.wait()
            if self._stopping.is_set():
                return
            if self._buffer:
                try:
                    await self.flush()
                except Exception as exc:  # kept for the next tick; the error is visible here
                    self.flush_failures += 1
                    log.warning("version log flush failed (%d pending): %s", self.pending, exc)

    async def close(self) -> None:
        """Stop the flusher, flush the rest (raises if that fails), release resources."""
        if self._flusher is not None:
            self._stopping.set()
            await self._flusher
            self._flusher = None
        await self.flush()
        await self._close_storage()

    async def prepare(self, session_ids: Iterable[str]) -> None:
        """Load the stored tails of these sessions if the backend keeps them elsewhere."""
        return None

    def forget(self, session_id: str) -> None:
        """Drop the in-memory tail of an ended session (it must not be appended to again)."""
        self._tails.pop(session_id, None)

    def _check_appendable(self) -> None:
        return None

    async def _write(self, batch: list[Pending]) -> None:
        raise NotImplementedError

    async def _close_storage(self) -> None:
        return None


def _consume(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved here too, so an unawaited failure is never reported twice


def parse_entries(session_id: str, rows: Sequence[Mapping[str, Any]]) -> list[LogEntry]:
    try:
        return [LogEntry.from_dict(row) for row in rows]
    except VersionLogError as exc:
        raise VersionLogError(f"session {session_id!r}: {exc}") from exc


class MemoryVersionLog(BufferedVersionLog):
    """In-process log for tests and demos. ``storage`` holds the flushed rows (plain dicts
    exactly as a durable backend would hold them), per session, in append order."""

    def __init__(self, clock: Clock, *, flush_interval_s: float | None = 0.05) -> None:
        super().__init__(clock, flush_interval_s=flush_interval_s)
        self.storage: dict[str, list[dict[str, Any]]] = {}

    async def _write(self, batch: list[Pending]) -> None:
        for item in batch:
            self.storage.setdefault(item.entry.session_id, []).append(json.loads(item.line))

    async def entries(self, session_id: str) -> list[LogEntry]:
        await self.flush()
        return parse_entries(session_id, self.storage.get(session_id, []))

    async def verify(self, session_id: str | None = None) -> list[VerifyReport]:
        await self.flush()
        ids = sorted(self.storage) if session_id is None else [session_id]
        return [verify_entries(s, self.storage.get(s, []), tail=self._tails.get(s)) for s in ids]

    async def session_ids(self) -> list[str]:
        await self.flush()
        return sorted(self.storage)


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
