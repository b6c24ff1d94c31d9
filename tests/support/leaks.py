"""Autouse fixture: fail any test that leaves asyncio tasks running on its loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

__all__ = ["no_leaked_tasks"]


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail any test that leaves asyncio tasks running on its loop."""
    before = set(asyncio.all_tasks())
    yield
    current = asyncio.current_task()
    leaked: set[asyncio.Task[object]] = set()
    for _ in range(20):  # give cancelled tasks a few loop turns to finish
        leaked = {t for t in asyncio.all_tasks() - before if t is not current and not t.done()}
        if not leaked:
            return
        await asyncio.sleep(0.01)
    names = ", ".join(sorted(t.get_name() + ":" + repr(t.get_coro()) for t in leaked))
    for task in leaked:
        task.cancel()
    pytest.fail(f"test left {len(leaked)} asyncio task(s) running: {names}")
