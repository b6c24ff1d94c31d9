"""The data directory's lock (``<data-dir>/.controlplane.lock``): one process per data dir.

Two services on one data directory would interleave their writes to one version log (broken
hash chains) and one policy store; ``serve`` and ``audit recover`` take the lock first.

The lock follows the data dir's disk: a disk repaired with the replica running (the failed
file system lazily unmounted, checked, mounted again at the same place: docs/reliability.md)
leaves the process holding a lock on the detached file system, and the data dir unlocked.
``keep_locked`` (serve's background task) notices that the lock file at the data dir's path is
not the one it holds (another device or inode) and takes the lock there again; if another
process took it meanwhile it says so at ERROR, once per change, and keeps trying.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Final

from aiohttp import web

__all__ = ["FOLLOW_INTERVAL_S", "LOCK_FILE", "DataDirLock", "keep_locked"]

log = logging.getLogger(__name__)

LOCK_FILE: Final = ".controlplane.lock"
FOLLOW_INTERVAL_S: Final = 1.0


class DataDirLock:
    """An exclusive ``flock`` on ``<path>/.controlplane.lock`` held for the process's life."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = self._take()
        self._refused: str | None = None  # why the last re-take failed (said once)

    def _take(self, create: bool = True) -> int:
        """The lock, or OSError naming the holder when another process has it."""
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        fd = os.open(self.path / LOCK_FILE, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise OSError(
                errno.EBUSY,
                f"--data-dir {self.path} (CONTROLPLANE_DATA_DIR) is in use by "
                f"another controlplane (pid {holder}): give each its own",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def moved(self) -> bool:
        """The lock file at the data dir's path is not the one held (its disk was replaced
        under it), or is gone."""
        try:
            now = os.stat(self.path / LOCK_FILE)
        except OSError:
            return True
        held = os.fstat(self.fd)
        return (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino)

    def follow(self) -> bool:
        """Take the lock again where the data dir now is, if it moved; True when held there.
        Never raises: a data dir still unwritable (the disk not back yet) is tried again."""
        if not self.moved():
            return True
        try:  # (never created here: a bare mount point while the disk is off is no data dir)
            fd = self._take(create=False)
        except OSError as exc:
            text = str(exc)
            if text != self._refused:
                self._refused = text
                log.error("data dir %s: its disk changed under this process and its lock "
                          "cannot be taken again: %s", self.path, text)  # fmt: skip
            return False
        with contextlib.suppress(OSError):
            os.close(self.fd)  # (the detached file system's lock)
        self.fd, self._refused = fd, None
        log.warning("data dir %s: its disk changed under this process (remounted); its lock "
                    "is held again", self.path)  # fmt: skip
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def keep_locked(
    lock: DataDirLock, interval_s: float = FOLLOW_INTERVAL_S
) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp cleanup context (``app.cleanup_ctx.append(...)``) running ``lock.follow``
    every ``interval_s`` on a worker thread while the app runs."""

    async def follow_task() -> None:
        while True:
            await asyncio.sleep(interval_s)
            await asyncio.to_thread(lock.follow)

    async def context(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(follow_task(), name="data-dir-lock")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return context
