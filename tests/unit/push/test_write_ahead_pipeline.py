"""A large fan-out pipelines its write-ahead: frames of the first chunk leave while later
chunks are still being written, and still no frame leaves before its own entry is on disk.

A real ``ControlPlane`` on a real ``FileVersionLog`` (JSONL files under tmp), the in-process
bus and registry; the sessions' transports are in-process recorders (the engine's own
``Transport`` seam), so the test sees the exact moment each frame is handed over.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import gc
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from controlplane.config import Settings
from controlplane.intake.bus import InProcessBus
from controlplane.metrics import Metrics
from controlplane.push.protocol import Push
from controlplane.push.write_ahead import BLOCK_S, CHUNK, WriteAhead
from controlplane.service.plane import ControlPlane
from sessions.clock import FakeClock
from sessions.dialects import dialect_for
from sessions.registry import MemoryRegistry
from sessions.versionlog.file import FileVersionLog

SESSIONS = 4 * CHUNK + 37  # several chunks, the last one partial


class _HeldSecondWrite(FileVersionLog):
    """Once armed, a slow disk (each write takes 20 ms more, so a frame sent before its
    write finished would see the file without its entry), and the second write waits until
    ``release`` is set (by the first frame): the first frame must leave before it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.armed = False
        self.writes = 0
        self.release = threading.Event()

    def _write_sync(self, day: str, lines: list[bytes]) -> None:
        if self.armed:
            self.writes += 1
            time.sleep(0.02)
            if self.writes == 2:
                assert self.release.wait(10), "the first frame never left"
        super()._write_sync(day, lines)


class _Recorder:
    """A control-channel-like transport that notes the log file's size at each frame."""

    acknowledging = True

    def __init__(self, session_id: str, log: _HeldSecondWrite, seen: list[tuple[str, int]]):
        self.session_id = session_id
        self.log = log
        self.seen = seen

    def congested(self) -> bool:
        return False

    async def write(self, push: Push, wire: dict[str, Any], text: str) -> None:
        (path,) = self.log_files()
        self.seen.append((self.session_id, path.stat().st_size))
        self.log.release.set()

    def log_files(self) -> list[Path]:
        return sorted(self.log._dir.glob("versionlog-*.jsonl"))


async def test_a_large_fan_out_sends_early_chunks_before_later_ones_are_written(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    settings = Settings.from_env({}, data_dir=tmp_path)
    versionlog = _HeldSecondWrite(tmp_path / "audit", clock, flush_interval_s=None)
    cp = ControlPlane(settings, clock=clock, metrics=Metrics(), registry=MemoryRegistry(clock),
                      versionlog=versionlog, bus=InProcessBus())  # fmt: skip
    await cp.start()
    seen: list[tuple[str, int]] = []
    try:
        for i in range(SESSIONS):
            session, effective = cp.new_session(
                kind="streaming-v3", model="u3-rt-pro", labels={"team": "a"}, client_config={},
                session_id=f"s{i:04d}",
            )  # fmt: skip
            ls = await cp.attach(
                session, effective, transport=_Recorder(session.id, versionlog, seen),
                dialect=dialect_for("streaming-v3"), running={}, connect_wire=None,
            )  # fmt: skip
            cp.engine.mark_ready(ls)
        await versionlog.flush()  # the connect entries
        versionlog.armed = True

        await cp.publish_policy(
            {"id": "p", "match": {"labels": {"team": "a"}}, "set": {"prompt": "v2 prompt"}},
            actor="test",
        )
        await versionlog.flush()

        assert sorted(sid for sid, _ in seen) == [f"s{i:04d}" for i in range(SESSIONS)]
        assert versionlog.writes >= 2  # pipelined: more than one write for the fan-out
        # byte offset just past each session's `sent` policy entry
        (path,) = sorted((tmp_path / "audit").glob("versionlog-*.jsonl"))
        data = path.read_bytes()
        end_of: dict[str, int] = {}
        offset = 0
        for line in data.splitlines(keepends=True):
            offset += len(line)
            row = json.loads(line)
            if row["cause"] == "policy" and row["status"] == "sent":
                end_of[row["session_id"]] = offset
        assert len(end_of) == SESSIONS
        # write-ahead: every frame left after its own entry was in the file
        late = [(sid, size, end_of[sid]) for sid, size in seen if size < end_of[sid]]
        assert late == []
        # pipelined: the first frame left before the fan-out's last entries were written
        assert seen[0][1] < max(end_of.values())
        assert all(r.ok for r in await versionlog.verify())
    finally:
        versionlog.release.set()
        await cp.close()


async def test_finish_sends_the_last_frames_before_anything_else_runs(tmp_path: Path) -> None:
    """When every earlier write is already done, the last chunk still gets its own write,
    waited for without yielding: a yield would first run whatever the loop has ready (in a
    real fan-out, the acknowledgements of every frame already sent)."""
    versionlog = FileVersionLog(tmp_path / "audit", FakeClock(), flush_interval_s=None)
    await versionlog.start()
    order: list[str] = []

    async def send(chunk: list[Any]) -> None:
        order.extend(f"frame {item}" for item in chunk)

    def queue(ahead: WriteAhead, n: int) -> None:
        for _ in range(n):
            i = len(ahead.outgoing)
            versionlog.append(f"s{i}", version=1, cause="connect", status="sent", config={})
            ahead.outgoing.append(i)  # type: ignore[arg-type]  # send() only names them

    try:
        ahead = WriteAhead(versionlog, send, _never_refused)
        queue(ahead, CHUNK)
        await ahead.step()  # starts the first write
        concurrent.futures.wait([versionlog._submitted[-1].future], timeout=5)
        await ahead.step()  # its frames go; no write is left in flight
        assert len(order) == CHUNK
        queue(ahead, 5)
        asyncio.get_running_loop().call_soon(order.append, "other work")
        await ahead.finish()
        assert order[CHUNK : CHUNK + 5] == [f"frame {i}" for i in range(CHUNK, CHUNK + 5)]
        assert versionlog.pending == 0
    finally:
        await versionlog.close()


def _never_refused(chunk: list[Any], error: Exception) -> None:
    raise AssertionError(f"refused {len(chunk)} frames: {error}")


async def test_frames_whose_entries_could_not_be_written_are_refused_not_sent(
    tmp_path: Path,
) -> None:
    """A chunk made durable sends its frames; the write of the next one fails (a real OS
    error: the next day's file is a directory, EISDIR): its frames are handed to ``refuse``
    with the error, never to ``send``, and their entries stay buffered for the retry."""
    clock = FakeClock()
    versionlog = FileVersionLog(tmp_path / "audit", clock, flush_interval_s=None)
    await versionlog.start()
    sent: list[Any] = []
    refused: list[tuple[list[Any], Exception]] = []

    async def send(chunk: list[Any]) -> None:
        sent.extend(chunk)

    def queue(ahead: WriteAhead, n: int) -> None:
        for _ in range(n):
            i = len(ahead.outgoing)
            versionlog.append(f"s{i}", version=1, cause="connect", status="sent", config={})
            ahead.outgoing.append(i)  # type: ignore[arg-type]  # send() only names them

    try:
        ahead = WriteAhead(versionlog, send, lambda chunk, exc: refused.append((chunk, exc)))
        queue(ahead, CHUNK)
        await ahead.step()  # starts the first write
        concurrent.futures.wait([versionlog._submitted[-1].future], timeout=5)
        await ahead.step()  # durable: its frames go
        assert sent == list(range(CHUNK))
        clock.advance(86_400)  # the next write opens the next day's file: a directory
        blocked = tmp_path / "audit" / time.strftime("versionlog-%Y-%m-%d.jsonl",
                                                     time.gmtime(clock.now()))  # fmt: skip
        blocked.mkdir()
        queue(ahead, 2 * CHUNK + 5)
        await ahead.step()
        await ahead.finish()
        assert sent == list(range(CHUNK))  # nothing whose entry is not on disk
        [(chunk, error)] = refused
        assert chunk == list(range(CHUNK, 3 * CHUNK + 5))
        assert "Is a directory" in str(error)
        assert versionlog.pending == 2 * CHUNK + 5  # kept, in order, for the retry
        blocked.rmdir()
        await versionlog.flush()
        assert versionlog.pending == 0 and versionlog.write_failing_since is None
    finally:
        await versionlog.close()


class _SlowReadOnly(FileVersionLog):
    """Once armed, a write that takes longer than ``BLOCK_S`` and then fails as a read-only
    file system does (``EROFS``)."""

    armed = False

    def _write_sync(self, day: str, lines: list[bytes]) -> None:
        if self.armed:
            time.sleep(4 * BLOCK_S)
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        super()._write_sync(day, lines)


async def test_a_slow_failed_write_is_refused_and_leaves_no_unretrieved_future(
    tmp_path: Path,
) -> None:
    """``finish()`` waits for a write slower than ``BLOCK_S`` asynchronously; when that write
    fails, the frames are refused and the awaited copy of its future is retrieved: the loop
    reports no "Future exception was never retrieved" (a Traceback in a replica's log whose
    disk turned read-only, tests/integration/distributed/test_disk_read_only.py)."""
    versionlog = _SlowReadOnly(tmp_path / "audit", FakeClock(), flush_interval_s=None)
    await versionlog.start()
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    refused: list[tuple[list[Any], Exception]] = []
    try:
        ahead = WriteAhead(versionlog, _never_sent, lambda c, exc: refused.append((c, exc)))
        for i in range(5):
            versionlog.append(f"s{i}", version=1, cause="connect", status="sent", config={})
            ahead.outgoing.append(i)  # type: ignore[arg-type]  # refuse() only names them
        versionlog.armed = True
        quiet = logging.getLogger("controlplane.push.write_ahead")
        quiet.disabled = True  # (pytest would keep its warning's record, and the error, alive)
        try:
            await ahead.finish()
        finally:
            quiet.disabled = False
        [(chunk, error)] = refused
        assert chunk == list(range(5)) and "Read-only file system" in str(error)
        # the failed write's future is in a reference cycle with its error (the traceback
        # holds the worker's frame): collected, not freed, once nothing else holds the error
        del ahead, chunk, error
        refused.clear()
        gc.collect()
        await asyncio.sleep(0)  # (the handler is called from the future's __del__)
        assert [c.get("message") for c in reported] == []
        versionlog.armed = False
        await versionlog.flush()
        assert versionlog.pending == 0
    finally:
        loop.set_exception_handler(None)
        await versionlog.close()


async def _never_sent(chunk: list[Any]) -> None:
    raise AssertionError(f"sent {len(chunk)} frames whose entries are not durable")
