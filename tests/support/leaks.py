"""Autouse fixtures: fail any test that leaves asyncio tasks running on its loop, or that
leaves the process's recursion limit changed."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

__all__ = ["no_leaked_tasks", "recursion_limit_kept"]


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


@pytest.fixture(autouse=True)
def recursion_limit_kept() -> Iterator[None]:
    """Fail (and undo) a test that changes ``sys.getrecursionlimit()`` for the tests after it.
    The depth refusals ("nested too deeply": REST bodies, owner requests, ...) are json's
    RecursionError at the process limit: mypy run in-process set it to 16,384 for the rest
    of the run, and a 5,000-deep owner request then decoded (an order-dependent failure of
    tests/integration/distributed/test_poison_events.py)."""
    before = sys.getrecursionlimit()
    yield
    after = sys.getrecursionlimit()
    if after != before:
        sys.setrecursionlimit(before)
        pytest.fail(f"test changed the recursion limit from {before} to {after} (restored)")
