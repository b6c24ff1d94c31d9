"""One version log contract, run against memory, JSONL files and a real redis-server.

Tampering goes through each backend's own storage (the memory rows, the JSONL lines, the
Redis list), never through the log's API.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from policies.provenance import PolicyRef
from sessions.clock import FakeClock
from sessions.errors import BackendUnavailable, VersionLogError
from sessions.versionlog.core import BufferedVersionLog, LogEntry
from sessions.versionlog.file import FileVersionLog
from sessions.versionlog.memory import MemoryVersionLog
from sessions.versionlog.redis_log import RedisVersionLog
from tests.support.servers import redis_server

GENESIS = "0" * 64
DIGEST, DIGEST_AB = "d" * 64, "a" * 64  # the versions' content digests ride along
CONFIG = {"prompt": "Always disclose.", "keyterms": ("acme", "gdpr"), "vad_threshold": 0.5}


class Storage:
    """Direct access to what a backend stored: rows in order, and ways to tamper with them."""

    async def rows(self, sid: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def replace(self, sid: str, rows: list[dict[str, Any]]) -> None:
        raise NotImplementedError


class MemoryStorage(Storage):
    def __init__(self, log: MemoryVersionLog) -> None:
        self.log = log

    async def rows(self, sid: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.log.storage.get(sid, [])]

    async def replace(self, sid: str, rows: list[dict[str, Any]]) -> None:
        self.log.storage[sid][:] = rows  # the very list the log reads


class FileStorage(Storage):
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def files(self) -> list[Path]:
        return sorted(self.directory.glob("versionlog-*.jsonl"))

    async def rows(self, sid: str) -> list[dict[str, Any]]:
        out = []
        for path in self.files():
            for line in path.read_bytes().splitlines():
                row = json.loads(line)
                if row["session_id"] == sid:
                    out.append(row)
        return out

    async def replace(self, sid: str, rows: list[dict[str, Any]]) -> None:
        (path,) = self.files()  # one UTC day in these tests
        lines = path.read_bytes().splitlines(keepends=True)
        positions = [i for i, line in enumerate(lines) if json.loads(line)["session_id"] == sid]
        others = [line for i, line in enumerate(lines) if i not in positions]
        mine = [json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in rows]
        at = positions[0] if positions else len(others)
        path.write_bytes(b"".join(others[:at] + mine + others[at:]))


class RedisStorage(Storage):
    """Tampers with LSET / LREM / LINSERT so the list is edited in place, as an intruder would."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def key(self, sid: str) -> str:
        return f"{self.prefix}log:{sid}"

    async def rows(self, sid: str) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in await self.client.lrange(self.key(sid), 0, -1)]

    async def replace(self, sid: str, rows: list[dict[str, Any]]) -> None:
        key = self.key(sid)
        old = await self.client.lrange(key, 0, -1)
        new = [json.dumps(r, separators=(",", ":")).encode() for r in rows]
        if len(new) == len(old):
            for i, (a, b) in enumerate(zip(old, new, strict=True)):
                if a != b:
                    await self.client.lset(key, i, b)
        elif len(new) == len(old) - 1:
            (gone,) = [raw for raw in old if raw not in new]
            assert await self.client.lrem(key, 1, gone) == 1
        elif len(new) == len(old) + 1:
            i = next(i for i, raw in enumerate(new) if i >= len(old) or raw != old[i])
            assert i < len(old), "only inserts before an existing entry are supported"
            assert await self.client.linsert(key, "BEFORE", old[i], new[i]) > 0
        else:
            raise AssertionError("one change at a time")


@dataclass
class Backend:
    name: str
    log: BufferedVersionLog
    clock: FakeClock
    storage: Storage
    reopen: Callable[[], Awaitable[BufferedVersionLog]]  # a new instance on the same storage


@pytest.fixture(params=["memory", "file", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    clock = FakeClock()
    opened: list[BufferedVersionLog] = []
    client: aioredis.Redis | None = None

    async def start(log: BufferedVersionLog) -> BufferedVersionLog:
        opened.append(log)
        await log.start()
        return log

    if request.param == "memory":
        memory = MemoryVersionLog(clock)

        async def reopen_memory() -> BufferedVersionLog:
            raise AssertionError("memory storage does not outlive its log")

        backend = Backend(
            "memory", await start(memory), clock, MemoryStorage(memory), reopen_memory
        )
    elif request.param == "file":
        directory = tmp_path / "audit"

        async def reopen_file() -> BufferedVersionLog:
            return await start(FileVersionLog(directory, clock, fsync=False))

        backend = Backend("file", await reopen_file(), clock, FileStorage(directory), reopen_file)
    else:
        url: str = request.getfixturevalue("redis_url")
        prefix = f"t{uuid.uuid4().hex[:10]}:"
        client = aioredis.from_url(url)

        async def reopen_redis() -> BufferedVersionLog:
            return await start(RedisVersionLog(url, clock, prefix=prefix))

        storage = RedisStorage(client, prefix)
        backend = Backend("redis", await reopen_redis(), clock, storage, reopen_redis)
    try:
        yield backend
    finally:
        for log in opened:
            await log.close()
        if client is not None:
            await client.aclose()


def append(log: BufferedVersionLog, sid: str, version: int, **overrides: Any) -> LogEntry:
    fields: dict[str, Any] = {
        "version": version,
        "cause": "policy",
        "policies": [
            PolicyRef("eu-disclosure", version, None, DIGEST),
            {"id": "ab", "version": 1, "digest": DIGEST_AB},
        ],
        "delta": {"prompt": f"v{version}", "vad_threshold": None, "keyterms": ("a", "b")},
        "wire": {"type": "UpdateConfiguration", "prompt": f"v{version}"},
        "status": "sent",
        "error": None,
        "config": CONFIG,
    }
    fields.update(overrides)
    return log.append(sid, **fields)


def expected_hash(row: dict[str, Any]) -> str:
    """The DESIGN §4 formula, computed independently of the code under test."""
    body = {k: v for k, v in row.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((row["prev_hash"] + canonical).encode()).hexdigest()


async def test_append_flush_entries_round_trip(backend: Backend) -> None:
    log = backend.log
    appended = [append(log, "s1", v) for v in (1, 2)]
    appended.append(
        append(log, "s1", 2, cause="client", status="rejected", error="bad", delta=None, wire=None)
    )
    assert log.pending == 3
    await log.flush()
    assert log.pending == 0
    assert await log.entries("s1") == appended
    first = appended[0]
    assert first.policies == (
        {"id": "eu-disclosure", "version": 1, "variant": None, "digest": DIGEST},
        {"id": "ab", "version": 1, "variant": None, "digest": DIGEST_AB},
    )
    assert first.delta == {"prompt": "v1", "vad_threshold": None, "keyterms": ["a", "b"]}
    assert first.at == backend.clock.now()
    config_json = json.dumps(CONFIG, sort_keys=True, separators=(",", ":")).encode()
    assert first.config_hash == hashlib.sha256(config_json).hexdigest()
    assert await log.entries("never-seen") == []


async def test_chains_are_per_session_and_interleave(backend: Backend) -> None:
    log = backend.log
    for v in range(1, 4):
        append(log, "a", v)
        backend.clock.advance(0.5)
        append(log, "b", v)
        if v == 2:
            await log.flush()  # chains span flushes
    await log.flush()
    for sid in ("a", "b"):
        rows = await backend.storage.rows(sid)
        assert [r["seq"] for r in rows] == [1, 2, 3]
        assert rows[0]["prev_hash"] == GENESIS
        for prev, row in zip([None, *rows], rows, strict=False):
            if prev is not None:
                assert row["prev_hash"] == prev["hash"]
            assert row["hash"] == expected_hash(row)
            assert row["session_id"] == sid
    assert await log.session_ids() == ["a", "b"]
    reports = await log.verify()
    assert [(r.session_id, r.ok, r.count) for r in reports] == [("a", True, 3), ("b", True, 3)]
    (single,) = await log.verify("b")
    assert single.ok and single.first_bad_seq is None and single.problem is None


def rehash(row: dict[str, Any]) -> dict[str, Any]:
    row["hash"] = expected_hash(row)
    return row


def forge_twin(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Insert a forged, correctly hashed entry claiming seq 3 right before the real seq 3."""
    forged = rehash({**rows[2], "status": "acked", "wire": {"type": "Forged"}})
    return [*rows[:2], forged, *rows[2:]]


TAMPERING: dict[str, tuple[Callable[[list[dict[str, Any]]], list[dict[str, Any]]], str, int]] = {
    "edit": (lambda r: [*r[:2], {**r[2], "status": "acked"}, *r[3:]], "edited", 3),
    "edit-and-rehash": (
        lambda r: [*r[:2], rehash({**r[2], "error": "hidden"}), *r[3:]],
        "edited",
        3,
    ),
    "delete": (lambda r: [*r[:2], *r[3:]], "deleted", 3),
    "delete-first": (lambda r: r[1:], "deleted", 1),
    "delete-last": (lambda r: r[:-1], "truncated", 5),
    "insert": (forge_twin, "inserted", 3),
    "insert-copy": (lambda r: [*r[:3], dict(r[1]), *r[3:]], "inserted", 2),
    "reorder": (lambda r: [*r[:2], r[3], r[2], r[4]], "reordered", 3),
}


@pytest.mark.parametrize("tampering", list(TAMPERING))
async def test_tampering_is_detected_and_located(backend: Backend, tampering: str) -> None:
    change, kind, first_bad = TAMPERING[tampering]
    log = backend.log
    for v in range(1, 6):
        append(log, "victim", v)
        append(log, "bystander", v)
    await log.flush()
    assert all(r.ok for r in await log.verify())
    await backend.storage.replace("victim", change(await backend.storage.rows("victim")))

    (report,) = await log.verify("victim")
    assert not report.ok
    assert (report.kind, report.first_bad_seq) == (kind, first_bad), report.problem
    assert report.problem is not None and report.problem.startswith(f"{kind}: ")
    everyone = {r.session_id: r for r in await log.verify()}
    assert everyone["victim"] == report
    assert everyone["bystander"].ok


async def test_appends_are_validated(backend: Backend) -> None:
    with pytest.raises(ValueError, match="cause"):
        append(backend.log, "s1", 1, cause="whim")
    with pytest.raises(ValueError, match="status"):
        append(backend.log, "s1", 1, status="applied")
    assert backend.log.pending == 0


async def test_background_flusher_makes_appends_durable(backend: Backend) -> None:
    append(backend.log, "s1", 1)
    for _ in range(100):
        if await backend.storage.rows("s1"):
            break
        await asyncio.sleep(0.01)
    assert [r["seq"] for r in await backend.storage.rows("s1")] == [1]


# memory storage does not outlive its log: only the durable backends can be reopened
@pytest.mark.parametrize("backend", ["file", "redis"], indirect=True)
async def test_chain_continues_in_a_new_instance(backend: Backend) -> None:
    for v in (1, 2, 3):
        append(backend.log, "s1", v)
    await backend.log.close()
    again = await backend.reopen()
    entry = append(again, "s1", 4)
    await again.flush()
    stored = await again.entries("s1")
    assert [e.seq for e in stored] == [1, 2, 3, 4]
    assert stored[3].prev_hash == stored[2].hash
    if backend.name != "redis":  # redis re-chains lazily at flush unless prepared (below)
        assert stored[3] == entry
    (report,) = await again.verify("s1")
    assert report.ok, report.problem


async def test_redis_prepare_loads_tails_before_append(redis_url: str) -> None:
    clock = FakeClock()
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    first = RedisVersionLog(redis_url, clock, prefix=prefix, flush_interval_s=None)
    append(first, "s1", 1)
    append(first, "s1", 2)
    await first.close()
    second = RedisVersionLog(redis_url, clock, prefix=prefix, flush_interval_s=None)
    try:
        await second.prepare(["s1", "brand-new"])
        entry = append(second, "s1", 3)
        assert entry.seq == 3
        assert append(second, "brand-new", 1).seq == 1
        assert (await second.entries("s1"))[-1] == entry
    finally:
        await second.close()


async def test_redis_flush_failure_keeps_entries_for_retry() -> None:
    clock = FakeClock()
    with redis_server() as server:
        log = RedisVersionLog(server.url, clock, flush_interval_s=None)
        try:
            kept = [append(log, "s1", v) for v in (1, 2)]
            server.stop()
            with pytest.raises(BackendUnavailable):
                await log.flush()
            assert log.pending == 2
            appended_later = append(log, "s1", 3)
            server.start()
            await log.flush()
            assert await log.entries("s1") == [*kept, appended_later]
            assert (await log.verify("s1"))[0].ok
        finally:
            await log.close()


async def test_file_flush_failure_keeps_entries_for_retry(tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    log = FileVersionLog(directory, FakeClock(), fsync=True, flush_interval_s=None)
    await log.start()
    try:
        kept = [append(log, "s1", v) for v in (1, 2)]
        directory.rmdir()
        directory.write_text("not a directory")  # the disk "fails"
        with pytest.raises(BackendUnavailable):
            await log.flush()
        assert log.pending == 2
        directory.unlink()
        directory.mkdir()
        await log.flush()
        assert await log.entries("s1") == kept
    finally:
        await log.close()


def _lines(directory: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted(directory.glob("versionlog-*.jsonl"))
        for line in path.read_bytes().splitlines()
    ]


async def test_file_submit_makes_entries_durable_without_a_flush_and_in_order(
    tmp_path: Path,
) -> None:
    """``submit()`` hands the entries to the writer thread and returns at once; when its
    future is done they are on disk. Writes land in the order they were started."""
    log = FileVersionLog(tmp_path, FakeClock(), fsync=True, flush_interval_s=None)
    await log.start()
    try:
        first = [append(log, f"s{i}", 1) for i in range(3)]
        write = log.submit()
        second = [append(log, "s0", 2), append(log, "s1", 2)]
        later = log.submit()
        assert log.pending == 5  # started, not yet accounted for by a flush
        later.result(timeout=10)
        assert write.done() and write.exception() is None
        rows = _lines(tmp_path)  # no flush ran: the writer thread wrote them
        assert [(r["session_id"], r["seq"]) for r in rows] == [
            (e.session_id, e.seq) for e in first + second
        ]
        assert log.submit() is later  # nothing new: the newest write stands for all
        await log.flush()
        assert log.pending == 0
        assert await log.entries("s0") == [first[0], second[0]]
        assert all(r.ok for r in await log.verify())
    finally:
        await log.close()


class _FullDisk(FileVersionLog):
    """The first ``failures`` writes fail as a full disk would (before any byte lands)."""

    failures = 1

    def _write_sync(self, day: str, lines: list[bytes]) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        super()._write_sync(day, lines)


async def test_file_a_failed_write_holds_back_the_writes_queued_behind_it(
    tmp_path: Path,
) -> None:
    """A write that fails leaves no line, and the writes started after it are not attempted
    even though the disk is back (they would put later entries of a chain before earlier
    ones); flush() puts all their entries back in order and names the failure; the retry
    writes everything once, in order."""
    log = _FullDisk(tmp_path, FakeClock(), fsync=True, flush_interval_s=None)
    await log.start()
    try:
        a = [append(log, "s1", 1), append(log, "s2", 1)]
        failing = log.submit()
        b = [append(log, "s1", 2)]
        held = log.submit()
        c = [append(log, "s2", 2)]  # appended, not started
        assert isinstance(failing.exception(timeout=10), OSError)
        assert isinstance(held.exception(timeout=10), Exception)
        assert _lines(tmp_path) == []  # the disk works again, yet nothing jumped the queue
        with pytest.raises(BackendUnavailable, match="No space left on device"):
            await log.flush()
        assert log.pending == 4
        assert log.write_failing_since is not None
        assert _lines(tmp_path) == []
        await log.flush()
        assert [(r["session_id"], r["seq"]) for r in _lines(tmp_path)] == [
            (e.session_id, e.seq) for e in a + b + c
        ]
        assert log.pending == 0 and log.write_failing_since is None
        assert all(r.ok for r in await log.verify())
    finally:
        await log.close()


class _ReadOnlyAfterWrite(FileVersionLog):
    """Once armed, the next write's lines reach the file, then it fails as on ext4 turned
    read-only mid-write: ``fdatasync`` says EIO (the journal aborted, though the transaction
    had committed) and the truncate fails (EROFS), so the lines stay; the file is closed."""

    armed = False

    def _write_sync(self, day: str, lines: list[bytes]) -> None:
        if not self.armed:
            super()._write_sync(day, lines)
            return
        self.armed = False
        with self._path(day).open("ab") as f:
            f.write(b"".join(lines))
        self._close_fd()
        raise OSError(5, "Input/output error")


async def test_file_a_failed_write_whose_lines_reached_the_disk_is_written_once(
    tmp_path: Path,
) -> None:
    """A write reported failed may be on disk after all (ext4 after a disk error: fdatasync
    EIO, the truncate refused): the retry cuts those lines and writes the entries once, so no
    entry is in the file twice (two terminal entries of one push)."""
    log = _ReadOnlyAfterWrite(tmp_path, FakeClock(), fsync=True, flush_interval_s=None)
    await log.start()
    try:
        a = [append(log, "s1", 1), append(log, "s2", 1)]
        await log.flush()
        b = [append(log, "s1", 2), append(log, "s2", 2)]
        log.armed = True
        with pytest.raises(BackendUnavailable, match="Input/output error"):
            await log.flush()
        assert len(_lines(tmp_path)) == 4 and log.pending == 2  # on disk, yet not durable
        c = [append(log, "s1", 3)]
        await log.flush()
        assert [(r["session_id"], r["seq"]) for r in _lines(tmp_path)] == [
            (e.session_id, e.seq) for e in a + b + c
        ]
        assert all(r.ok for r in await log.verify())
    finally:
        await log.close()


async def test_file_append_requires_start(tmp_path: Path) -> None:
    log = FileVersionLog(tmp_path, FakeClock())
    with pytest.raises(VersionLogError, match="start"):
        append(log, "s1", 1)


async def test_file_torn_last_line_is_cut_reported_and_the_chain_continues(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    log = FileVersionLog(tmp_path, clock, fsync=False, flush_interval_s=None)
    await log.start()
    for v in (1, 2):
        append(log, "s1", v)
    await log.close()
    (path,) = sorted(tmp_path.glob("versionlog-*.jsonl"))
    whole = path.read_bytes()
    torn = b'{"at":1790000000.0,"cause":"policy","config_ha'
    path.write_bytes(whole + torn)  # a crash in the middle of the next write

    reader = FileVersionLog(tmp_path, clock, fsync=False, flush_interval_s=None)
    assert [e.seq for e in await reader.entries("s1")] == [1, 2]  # reading alone tolerates it

    again = FileVersionLog(tmp_path, clock, fsync=False, flush_interval_s=None)
    await again.start()
    try:
        assert len(again.problems) == 1 and "torn last line" in again.problems[0]
        assert path.read_bytes() == whole
        assert path.with_name(path.name + ".torn").read_bytes() == torn + b"\n"
        assert append(again, "s1", 3).seq == 3
        await again.flush()
        assert [e.seq for e in await again.entries("s1")] == [1, 2, 3]
        assert all(r.ok for r in await again.verify())
    finally:
        await again.close()


async def test_file_layout_is_one_canonical_line_per_entry(tmp_path: Path) -> None:
    log = FileVersionLog(tmp_path, FakeClock(), fsync=False, flush_interval_s=None)
    await log.start()
    entry = append(log, "s1", 1)
    await log.close()
    (path,) = sorted(tmp_path.glob("versionlog-*.jsonl"))
    assert path.name == "versionlog-2026-09-21.jsonl"  # FakeClock's UTC day
    (line,) = path.read_bytes().splitlines()
    body = {k: v for k, v in entry.to_dict().items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert line == f'{canonical[:-1]},"hash":"{entry.hash}"}}'.encode()


class ReplyDropper:
    """A TCP relay in front of the real redis-server that can lose one reply to an EVALSHA:
    the request reaches Redis and runs, the client only sees the connection drop."""

    def __init__(self, url: str) -> None:
        host_port = url.split("//", 1)[1].split("/", 1)[0]
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)
        self.drop_evalsha_replies = 0
        self.dropped = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        server_r, server_w = await asyncio.open_connection(self.host, self.port)
        self._writers += [client_w, server_w]
        evalsha_pending = False

        async def requests() -> None:
            nonlocal evalsha_pending
            while data := await client_r.read(65536):
                evalsha_pending = evalsha_pending or b"EVALSHA" in data
                server_w.write(data)
                await server_w.drain()
            server_w.close()

        async def replies() -> None:
            nonlocal evalsha_pending
            while data := await server_r.read(65536):
                if evalsha_pending and self.drop_evalsha_replies:
                    self.drop_evalsha_replies -= 1
                    self.dropped += 1
                    break  # swallow the reply and hang up on the client
                evalsha_pending = False
                client_w.write(data)
                await client_w.drain()
            client_w.close()
            server_w.close()

        try:
            await asyncio.gather(requests(), replies(), return_exceptions=True)
        finally:
            self._tasks.discard(task)


async def test_redis_flush_whose_reply_was_lost_is_not_written_twice(redis_url: str) -> None:
    clock = FakeClock()
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    relay = ReplyDropper(redis_url)
    async with relay as relayed_url:
        log = RedisVersionLog(relayed_url, clock, prefix=prefix, flush_interval_s=None)
        try:
            appended = [append(log, "s1", v) for v in (1, 2, 3)]
            relay.drop_evalsha_replies = 1
            try:
                await log.flush()  # if redis-py re-sends the pipeline itself
            except BackendUnavailable:
                assert log.pending == 3  # the log kept the batch ...
                await log.flush()  # ... and re-sends it
            assert relay.dropped == 1
            assert await log.entries("s1") == appended
            assert (await log.verify("s1"))[0].ok
        finally:
            await log.close()
