"""The per-session version log: the ``VersionLog`` protocol, buffering and group commit.

Entries, canonical JSON and the hash chain are in ``sessions.versionchain`` (re-exported
here); the backends are ``memory``, ``file`` (JSONL) and ``redis_log`` in ``sessions.versionlog``.

``append()`` is synchronous: it chains the entry from an in-memory tail per session and
buffers the write, so the push hot path never awaits I/O. ``flush()`` makes everything
appended so far durable in one batch (group commit); on failure it raises and keeps the batch
for the next attempt, and a flush that is cancelled still finishes its write. ``start()`` runs
a background flusher (every ``flush_interval_s``); ``close()`` stops it and flushes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Protocol, TypeAlias

from mypy_extensions import mypyc_attr

from policies.provenance import PolicyRef
from sessions.clock import Clock
from sessions.errors import VersionLogError
from sessions.versionchain import (
    GENESIS,
    Canonical,
    EntryTemplate,
    LogEntry,
    VerifyReport,
    canonical_json,
    config_hash,
    seal,
    session_text,
    verify_entries,
)
from sessions.versionlog.members import (
    POLICY_MEMO,
    REDACTED,
    SECRET_WIRE_KEYS,
    as_canonical,
    canonical,
    policy_member,
    redacted,
)

__all__ = [
    "CAUSES",
    "GENESIS",
    "REDACTED",
    "SECRET_WIRE_KEYS",
    "STATUSES",
    "BufferedVersionLog",
    "Canonical",
    "LogEntry",
    "Pending",
    "Submitted",
    "VerifyReport",
    "VersionLog",
    "canonical",
    "canonical_json",
    "config_hash",
    "parse_entries",
    "redacted",
    "reseal",
    "session_text",
    "verify_entries",
]

log = logging.getLogger(__name__)

# A write started by ``VersionLog.submit``: ``done()`` can be polled from the event loop
# without yielding to it (the write runs on a thread), ``asyncio.wrap_future`` awaits it.
Submitted: TypeAlias = concurrent.futures.Future[None]

CAUSES: Final = ("connect", "policy", "relabel", "client", "rollback", "retire", "upstream")
STATUSES: Final = ("sent", "acked", "rejected", "skipped", "unverified", "unchanged")
_CAUSE_SET: Final = frozenset(CAUSES)
_STATUS_SET: Final = frozenset(STATUSES)


class VersionLog(Protocol):
    """What the push engine needs of a version log (``BufferedVersionLog`` adds ``append``,
    which also returns the entry)."""

    def add(
        self,
        session_id: str,
        *,
        version: int,
        cause: str,
        policies: Iterable[PolicyRef | Mapping[str, Any]] = (),
        delta: Mapping[str, Any] | Canonical | None = None,
        wire: Mapping[str, Any] | Canonical | None = None,
        status: str,
        error: str | None = None,
        config: Mapping[str, Any] | Canonical,
    ) -> None: ...

    def add_entry(
        self,
        session_id: str,
        version: int,
        cause: str,
        policies: Iterable[PolicyRef | Mapping[str, Any]],
        delta: Mapping[str, Any] | Canonical | None,
        wire: Mapping[str, Any] | Canonical | None,
        status: str,
        error: str | None,
        config: Mapping[str, Any] | Canonical,
        session_id_text: bytes | None = None,
    ) -> None:
        """``add`` with every member given in order (the push engine's per-session call);
        ``session_id_text``: ``session_text(session_id)``, when the caller keeps it."""
        ...

    @property
    def pending(self) -> int: ...

    @property
    def write_failing_since(self) -> float | None: ...  # first failure of writes failing now

    async def flush(self) -> None: ...

    def submit(self) -> Submitted | None: ...

    async def entries(self, session_id: str) -> list[LogEntry]: ...

    async def verify(self, session_id: str | None = None) -> list[VerifyReport]: ...

    async def session_ids(self) -> list[str]: ...

    async def prepare(self, session_ids: Iterable[str]) -> None: ...

    def forget(self, session_id: str) -> None: ...

    def tail(self, session_id: str) -> tuple[int, str] | None: ...  # last (seq, hash) here

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class Pending:
    """An appended entry waiting for the next flush: its line, and what the backends group
    and track it by. ``entry`` is built from the line on first use when ``add`` (the
    fan-out's path) did not build it."""

    __slots__ = ("_entry", "hash", "line", "seq", "session_id")

    def __init__(
        self, session_id: str, seq: int, digest: str, line: bytes, entry: LogEntry | None = None
    ) -> None:
        self.session_id = session_id
        self.seq = seq
        self.hash = digest
        self.line = line  # canonical JSON + "\n"
        self._entry = entry

    @property
    def entry(self) -> LogEntry:
        if self._entry is None:
            self._entry = LogEntry.from_dict(json.loads(self.line))
        return self._entry

    def reseal(self, body: dict[str, Any]) -> None:
        """Replace the entry with ``body`` chained anew (``seal``)."""
        entry, self.line = seal(body)
        self.session_id, self.seq, self.hash, self._entry = (
            entry.session_id, entry.seq, entry.hash, entry,
        )  # fmt: skip


_NO_TAIL: Final = (0, GENESIS)  # a session's tail before its first entry


def reseal(items: Iterable[Pending], session_id: str, tail: tuple[int, str]) -> tuple[int, str]:
    """Re-chain the pending entries of one session onto ``tail``; returns the new tail."""
    seq, digest = tail
    for item in items:
        if item.session_id == session_id:
            body = item.entry.to_dict()
            del body["hash"]
            seq += 1
            body["seq"], body["prev_hash"] = seq, digest
            item.reseal(body)
            digest = item.hash
    return seq, digest


@mypyc_attr(allow_interpreted_subclasses=True)  # (compiled: backends and test logs derive)
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
        self._policy_texts: dict[tuple[PolicyRef, ...], Canonical] = {}
        self._last_policies: tuple[tuple[PolicyRef, ...], Canonical] | None = None
        self._last_hash: tuple[Canonical, str] | None = None
        self._template: tuple[Any, ...] | None = None  # add()'s last reusable EntryTemplate
        # whether entries may be appended now (else ``_check_appendable`` raises why not)
        self._appendable = True
        # health for /readyz: set while writes fail, cleared by the next successful write
        self.write_failing_since: float | None = None  # clock.monotonic() of the first failure
        self.last_write_error: str | None = None

    def append(
        self,
        session_id: str,
        *,
        version: int,
        cause: str,
        policies: Iterable[PolicyRef | Mapping[str, Any]] = (),
        delta: Mapping[str, Any] | Canonical | None = None,
        wire: Mapping[str, Any] | Canonical | None = None,
        status: str,
        error: str | None = None,
        config: Mapping[str, Any] | Canonical,
    ) -> LogEntry:
        """Chain and buffer one entry (no I/O); it is durable after the next ``flush()``.

        ``delta``, ``wire`` and ``config`` may come pre-encoded (:func:`canonical`): a fan-out
        wraps its shared delta and message once for every session it logs.
        """
        self.add(
            session_id, version=version, cause=cause, policies=policies, delta=delta,
            wire=wire, status=status, error=error, config=config,
        )  # fmt: skip
        return self._buffer[-1].entry

    def add(
        self,
        session_id: str,
        *,
        version: int,
        cause: str,
        policies: Iterable[PolicyRef | Mapping[str, Any]] = (),
        delta: Mapping[str, Any] | Canonical | None = None,
        wire: Mapping[str, Any] | Canonical | None = None,
        status: str,
        error: str | None = None,
        config: Mapping[str, Any] | Canonical,
    ) -> None:
        """``append`` without returning the entry: the push engine's path, which never reads
        it back (building a ``LogEntry`` per session was a tenth of a fan-out's cost).

        Consecutive calls with the same pre-encoded members (the same ``Canonical`` delta,
        wire and config objects, the same tuple of ``PolicyRef``: a fan-out's sessions)
        reuse one ``EntryTemplate``, checked and encoded once.
        """
        self.add_entry(session_id, version, cause, policies, delta, wire, status, error, config)

    def add_entry(
        self,
        session_id: str,
        version: int,
        cause: str,
        policies: Iterable[PolicyRef | Mapping[str, Any]],
        delta: Mapping[str, Any] | Canonical | None,
        wire: Mapping[str, Any] | Canonical | None,
        status: str,
        error: str | None,
        config: Mapping[str, Any] | Canonical,
        session_id_text: bytes | None = None,
    ) -> None:
        """``add`` with every member given in order (positional: a keyword call of nine
        members costs the fan-out a little per session); ``session_id_text``: the session
        id as its JSON string (``session_text``), when the caller keeps it."""
        memo = self._template
        if (
            memo is not None
            and memo[0] is config
            and memo[1] is delta
            and memo[2] is wire
            and memo[3] is policies
            and memo[4] == cause
            and memo[5] == status
            and memo[6] == error
        ):
            template = memo[7]
        else:
            template = self._new_template(cause, policies, delta, wire, status, error, config,
                                          version)  # fmt: skip
        if not self._appendable:
            self._check_appendable()
        tails = self._tails
        seq, prev = tails.get(session_id, _NO_TAIL)
        seq += 1
        sid = str(session_id)
        if session_id_text is None:
            session_id_text = session_text(sid)
        digest, line = template.seal_encoded(float(self._clock.now()), prev, seq,
                                             session_id_text, int(version))  # fmt: skip
        tails[session_id] = (seq, digest)
        self._buffer.append(Pending(sid, seq, digest, line))

    def _new_template(
        self,
        cause: str,
        policies: Iterable[PolicyRef | Mapping[str, Any]],
        delta: Mapping[str, Any] | Canonical | None,
        wire: Mapping[str, Any] | Canonical | None,
        status: str,
        error: str | None,
        config: Mapping[str, Any] | Canonical,
        version: int,
    ) -> EntryTemplate:
        if cause not in _CAUSE_SET:
            raise ValueError(f"unknown cause {cause!r} (known: {', '.join(CAUSES)})")
        if status not in _STATUS_SET:
            raise ValueError(f"unknown status {status!r} (known: {', '.join(STATUSES)})")
        if error is not None and not isinstance(error, str):
            raise TypeError(f"error must be text or None, not {type(error).__name__}")
        conf = config if isinstance(config, Canonical) else canonical(config)
        # the starting config: `audit at` rebuilds from it
        starting = cause == "connect" and version == 1 and status == "sent"
        template = EntryTemplate(
            cause=cause,
            config=conf if starting else None,
            config_hash=self._config_hash(conf),
            delta=None if delta is None else as_canonical(delta),
            error=error,
            policies=self._policies(policies),
            status=status,
            wire=None
            if wire is None
            else as_canonical(wire if isinstance(wire, Canonical) else redacted(wire)),
        )
        # reused only for values that cannot change: Canonical members, PolicyRef tuples
        # (and never for connect entries, whose config member depends on the version)
        reusable = (
            cause != "connect"
            and type(config) is Canonical
            and (delta is None or type(delta) is Canonical)
            and (wire is None or type(wire) is Canonical)
            and type(policies) is tuple
            and all(type(p) is PolicyRef for p in policies)
        )
        self._template = (
            (config, delta, wire, policies, cause, status, error, template) if reusable else None
        )
        return template

    def _config_hash(self, conf: Canonical) -> str:
        last = self._last_hash  # consecutive appends of a fan-out often share the config
        if last is not None and last[0] is conf:
            return last[1]
        digest = hashlib.sha256(conf.text.encode()).hexdigest()
        self._last_hash = (conf, digest)
        return digest

    def _policies(self, policies: Iterable[PolicyRef | Mapping[str, Any]]) -> Canonical:
        """The policies member, encoded once per distinct tuple of ``PolicyRef`` (a fan-out
        passes the same few tuples for thousands of sessions)."""
        last = self._last_policies  # a fan-out passes its sessions the same tuple object
        if last is not None and last[0] is policies:
            return last[1]
        if type(policies) is tuple and all(type(p) is PolicyRef for p in policies):
            found = self._policy_texts.get(policies)
            if found is None:
                if len(self._policy_texts) >= POLICY_MEMO:
                    self._policy_texts.clear()
                found = Canonical.of_plain([p.as_dict() for p in policies])
                self._policy_texts[policies] = found
            self._last_policies = (policies, found)
            return found
        return Canonical.of_plain([policy_member(p) for p in policies])

    @property
    def pending(self) -> int:
        """Entries appended but not yet durable."""
        return len(self._buffer) + (len(self._inflight_batch) if self._inflight else 0)

    def submit(self) -> Submitted | None:
        """Start making every entry appended so far durable, without waiting for it.

        A fan-out hands each chunk of entries to the writer while it computes the next, and
        sends a chunk's frames once its write is ``done()``. ``None`` when this backend cannot
        start a write without yielding to the event loop (then ``flush()`` writes
        everything, as it always does). ``flush()`` also waits for submitted writes and
        raises their failure; a failed write's entries stay buffered, in order.
        """
        return None

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
        except BaseException as exc:
            self._buffer[:0] = batch  # keep order: the failed batch goes before newer appends
            if isinstance(exc, Exception):
                if self.write_failing_since is None:
                    self.write_failing_since = self._clock.monotonic()
                self.last_write_error = str(exc) or type(exc).__name__
            raise
        else:
            self.write_failing_since = self.last_write_error = None
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
            if self.pending:
                first = self.write_failing_since is None  # (a failure starts an outage)
                try:
                    await self.flush()
                except Exception as exc:  # kept for the next tick; the error is visible here
                    self.flush_failures += 1  # said at its start, then once a minute or so
                    log.log(logging.WARNING if first or self.flush_failures % 1200 == 0
                            else logging.DEBUG, "version log flush failed (%d pending): %s",
                            self.pending, exc)  # fmt: skip

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

    def tail(self, session_id: str) -> tuple[int, str] | None:
        return self._tails.get(session_id)

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
