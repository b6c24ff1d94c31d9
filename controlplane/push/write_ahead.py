"""Write-ahead, pipelined (DESIGN.md §6, "write it locally first"): no push frame leaves
before its version-log entry is durable, and a large fan-out does not wait for one commit of
everything before its first frame: every ``CHUNK`` pushes the log's writer thread starts a
group commit (``VersionLog.submit``) while the loop goes on, and a chunk's frames are written
as soon as its commit is done.

If the log cannot be written (disk full, an I/O error, a read-only file system) the frames
whose entries are not durable do not go: no frame leaves unrecorded (the record is the
product). Those pushes end ``rejected`` "not sent: the version log could not be written"
(the ``refuse`` callback; the entries, these endings included, stay buffered and are retried
by the log's flusher), the failure is logged, ``/readyz`` reports it, and each of those
sessions is owed its desired config, re-sent once the log writes again
(``controlplane.push.owed``). Frames of chunks made durable before the failure went.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from controlplane.push.frames import Frame
from controlplane.push.live import LiveSession
from controlplane.push.protocol import Push
from sessions.versionlog.core import Submitted, VersionLog

__all__ = [
    "BLOCK_S",
    "CHUNK",
    "CHUNK_MAX",
    "POLL",
    "Outgoing",
    "Refuse",
    "WriteAhead",
    "flush_before_frames",
]

log = logging.getLogger(__name__)

# A fan-out hands its entries to the log's writer at least CHUNK pushes at a time (more when
# the writer is still busy: a group commit per idle moment), and polls for finished commits
# every POLL pushes. The first commit is small (the first frames leave early); each later one
# waits for twice as many pushes, up to CHUNK_MAX: every commit hands the GIL back and forth
# between the writer thread and the loop a few times (a wake-up, each system call's return),
# and each hand-over can leave the loop waiting for a core on a busy machine (a 10,000-session
# fan-out made 40 commits and ~500 involuntary context switches of the loop; docs/benchmarks.md).
CHUNK = 256
CHUNK_MAX = 1024
POLL = 32
BLOCK_S = 0.05  # the longest a fan-out blocks the loop waiting for its last commits

Outgoing = tuple[LiveSession, Push, Frame]  # a logged push whose frame is still to send
# logged pushes whose entries could not be made durable (the error): their frames must not go
Refuse = Callable[[list[Outgoing], Exception], None]


async def flush_before_frames(
    versionlog: VersionLog, frames: int, *, retry: bool = False
) -> Exception | None:
    """Make every appended entry durable before ``frames`` frames go: None when they are;
    else the failure, reported here, and those frames must not go (the entries stay buffered
    and are retried). ``retry``: a write started earlier failed, and the first flush only
    accounts for it (its entries back in the buffer); the second writes them again."""
    try:
        try:
            await versionlog.flush()
        except Exception:
            if not retry:
                raise
            await versionlog.flush()
    except Exception as exc:
        log.warning(
            "version log write failed; the %d push frame(s) waiting on it are not sent (each "
            "ends rejected and is re-sent once the log writes again), the entries stay "
            "buffered and are retried: %s", frames, exc,
        )  # fmt: skip
        return exc
    return None


class WriteAhead:
    """A fan-out's write-ahead, pipelined. ``outgoing`` fills with logged pushes; ``step()``
    (every ``POLL`` pushes) starts a write of the entries appended so far once ``CHUNK``
    (later up to ``CHUNK_MAX``) are waiting and the writer is idle, and sends the frames of
    every chunk whose write is done; ``finish()`` writes the rest and sends every frame, each
    chunk once durable.

    A write that fails stops the frames (``send`` is called only for durable entries): from
    its chunk on, ``finish()`` flushes once more and, if that fails too, hands the rest to
    ``refuse``. A backend whose ``submit()`` is None gets one flush before all frames, as
    without pipelining.
    """

    __slots__ = (
        "_chunk", "_failed", "_log", "_refuse", "_send", "_sent", "_started", "_writes",
        "outgoing",
    )  # fmt: skip

    def __init__(
        self,
        versionlog: VersionLog,
        send: Callable[[list[Outgoing]], Awaitable[None]],
        refuse: Refuse,
    ) -> None:
        self.outgoing: list[Outgoing] = []
        self._log = versionlog
        self._send = send
        self._refuse = refuse
        self._failed = False  # a write failed: no frame goes until a flush succeeds
        self._writes: deque[tuple[int, Submitted]] = deque()  # (outgoing it covers, write)
        self._started = 0  # outgoing[:_started] have their write started
        self._sent = 0  # outgoing[:_sent] had their frames written
        self._chunk = CHUNK  # pushes the next write waits for (doubles up to CHUNK_MAX)

    async def step(self) -> None:
        if self._failed:
            return  # the rest waits for finish(): flushed again, or refused
        n = len(self.outgoing)
        if n - self._started >= self._chunk and (not self._writes or self._writes[-1][1].done()):
            self._start(n)
            self._chunk = min(2 * self._chunk, CHUNK_MAX)
        while self._writes and self._writes[0][1].done() and not self._failed:
            upto, write = self._writes.popleft()
            if _durable(write):
                await self._send_upto(upto)
            else:
                self._failed = True

    async def finish(self) -> None:
        n = len(self.outgoing)
        if n > self._started and not self._failed:
            # even when every earlier write is done: flush() below would yield to the loop,
            # which first runs the acknowledgements of every frame already sent
            self._start(n)
        while self._writes:
            upto, write = self._writes.popleft()
            if not write.done():
                # Block briefly instead of yielding: a yield lets the loop first run every
                # handler that became ready meanwhile (the acknowledgements of the frames
                # just sent, tens of µs each) before the rest of the frames go, and the
                # writer thread has the GIL to itself while we wait. A disk slower than
                # BLOCK_S gets the ordinary asynchronous wait.
                concurrent.futures.wait([write], timeout=BLOCK_S)
            if not write.done():
                waiter = asyncio.wrap_future(write)
                # a failed write is read from ``write`` below (or by a later flush); its
                # copy here must not be reported "Future exception was never retrieved"
                waiter.add_done_callback(_retrieve)
                await asyncio.wait([waiter])
            if self._failed or not _durable(write):
                self._failed = True
            else:
                await self._send_upto(upto)
        if n > self._sent or self._log.pending:
            # accounts for (and reports) the writes; after a failed one, tries them again
            error = await flush_before_frames(self._log, n - self._sent, retry=self._failed)
            if error is not None:
                refused, self._sent = self.outgoing[self._sent :], n
                if refused:
                    self._refuse(refused, error)
                return
        await self._send_upto(n)

    def _start(self, n: int) -> None:
        write = self._log.submit()
        if write is not None:  # else the backend writes on flush(), in finish()
            self._writes.append((n, write))
            self._started = n

    async def _send_upto(self, upto: int) -> None:
        if upto > self._sent:
            chunk, self._sent = self.outgoing[self._sent : upto], upto
            await self._send(chunk)


def _retrieve(waiter: asyncio.Future[None]) -> None:
    if not waiter.cancelled():
        waiter.exception()


def _durable(write: Submitted) -> bool:
    """Whether a finished write succeeded (its entries are durable)."""
    return not write.cancelled() and write.exception() is None
