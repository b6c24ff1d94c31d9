"""Group commit: concurrent callers' items written together, one backend round trip per batch.

``GroupCommit.submit(item)`` queues the item and waits for its result. One owned task writes
what is queued, up to ``max_batch`` items per call of ``flush`` (which returns one result per
item, in order); items that arrive while a batch is being written wait for the next one. So a
storm of N concurrent callers costs about N / max_batch round trips instead of N, and holds one
backend connection instead of N (issue #19: a reconnect storm of 2,000 session starts onto one
replica exhausted a pool of 20 Redis connections one registration at a time).

A ``flush`` that raises fails every item of its batch with that exception; the next batch is
tried anyway. A caller that stops waiting (cancelled) does not stop its batch.

``close(drain_s)`` stops taking items and still writes those already queued for up to
``drain_s`` seconds (a replica shutting down must not drop the session ends its last sockets
queued: ``RedisRegistry.close``); what is left then fails with ``GroupClosed``, and ``close``
returns every item it could not write (left, or in a batch that failed while closing).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["GroupClosed", "GroupCommit"]

T = TypeVar("T")
R = TypeVar("R")


class GroupClosed(RuntimeError):
    """The group commit closed before this item was written."""


class GroupCommit(Generic[T, R]):
    def __init__(
        self, flush: Callable[[list[T]], Awaitable[list[R]]], *, max_batch: int, name: str
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._flush = flush
        self._max = max_batch
        self._name = name
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None
        self._batch: list[tuple[T, asyncio.Future[R]]] = []  # being written
        self._closed = False
        self._unwritten: list[T] | None = None  # while closing: items that failed

    async def submit(self, item: T) -> R:
        if self._closed:
            raise RuntimeError(f"{self._name} is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name=self._name)
        return await future

    async def _run(self) -> None:
        while self._pending:
            self._batch = batch = self._pending[: self._max]
            del self._pending[: self._max]
            try:
                results = await self._flush([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"{self._name}: {len(results)} results for {len(batch)}")
            except Exception as exc:
                self._batch = []
                if self._unwritten is not None:
                    self._unwritten.extend(item for item, _ in batch)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self._batch = []
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def close(self, drain_s: float = 0.0) -> list[T]:
        """Stop taking items; write the queued ones for up to ``drain_s`` seconds, then fail
        the rest (the batch being written is cancelled) with ``GroupClosed``. Returns the
        items not written (module docstring)."""
        self._closed = True
        unwritten: list[T] = []
        self._unwritten = unwritten
        task, self._task = self._task, None
        if task is not None and not task.done() and drain_s > 0:
            await asyncio.wait([task], timeout=drain_s)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        left = self._batch + self._pending
        self._batch, self._pending = [], []
        for item, future in left:
            unwritten.append(item)
            if not future.done():
                future.set_exception(GroupClosed(f"{self._name} closed before this was written"))
        return unwritten
