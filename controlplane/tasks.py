"""Owned background tasks that stop when told to, even when a library swallows the cancel.

redis-py (8.1) turns a ``CancelledError`` that lands during a failing AUTH into a
``RedisError``: a loop that catches ``Exception`` to keep going would then run forever and
its owner's ``close()`` would wait forever. Loops call ``raise_if_cancelled()`` after each
guarded step; owners stop tasks with ``stop_task()``, which waits a bounded time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

__all__ = ["STOP_WAIT_S", "raise_if_cancelled", "stop_task"]

log = logging.getLogger(__name__)

STOP_WAIT_S: Final = 5.0


def raise_if_cancelled() -> None:
    """Raise CancelledError if this task was asked to stop (even if the request was eaten)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def stop_task(task: asyncio.Task[Any] | None, wait_s: float = STOP_WAIT_S) -> None:
    """Cancel ``task`` and wait for it, at most ``wait_s`` seconds per attempt (twice)."""
    if task is None or task.done():
        return
    for _ in range(2):
        task.cancel()
        done, _pending = await asyncio.wait({task}, timeout=wait_s)
        if done:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                task.result()
            return
    log.error("task %s did not stop after being cancelled twice", task.get_name())
