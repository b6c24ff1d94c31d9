"""``sessions.group_commit.GroupCommit``: batching, ordering of results, failures per batch,
cancellation of a waiter, close."""

from __future__ import annotations

import asyncio

import pytest

from sessions.group_commit import GroupClosed, GroupCommit


async def test_concurrent_items_are_flushed_together_in_batches_of_at_most_max() -> None:
    calls: list[list[int]] = []

    async def flush(batch: list[int]) -> list[int]:
        calls.append(batch)
        await asyncio.sleep(0)
        return [x * 10 for x in batch]

    commit: GroupCommit[int, int] = GroupCommit(flush, max_batch=4, name="t")
    results = await asyncio.gather(*(commit.submit(i) for i in range(10)))
    assert results == [i * 10 for i in range(10)]
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert await commit.submit(3) == 30  # a later lone item: its own batch
    await commit.close()


async def test_a_failing_flush_fails_its_batch_only() -> None:
    async def flush(batch: list[int]) -> list[int]:
        await asyncio.sleep(0)
        if 1 in batch:
            raise ConnectionError("backend down")
        return batch

    commit: GroupCommit[int, int] = GroupCommit(flush, max_batch=2, name="t")
    results = await asyncio.gather(*(commit.submit(i) for i in range(4)), return_exceptions=True)
    assert isinstance(results[0], ConnectionError) and isinstance(results[1], ConnectionError)
    assert results[2:] == [2, 3]
    await commit.close()


async def test_a_cancelled_waiter_does_not_stop_its_batch_and_close_cancels_the_queue() -> None:
    release = asyncio.Event()
    flushed: list[int] = []

    async def flush(batch: list[int]) -> list[int]:
        await release.wait()
        flushed.extend(batch)
        return batch

    commit: GroupCommit[int, int] = GroupCommit(flush, max_batch=2, name="t")
    first = asyncio.create_task(commit.submit(1))
    second = asyncio.create_task(commit.submit(2))
    await asyncio.sleep(0.01)
    first.cancel()
    release.set()
    assert await second == 2
    assert flushed == [1, 2]
    release.clear()
    waiting = asyncio.create_task(commit.submit(3))
    await asyncio.sleep(0.01)
    assert await commit.close() == [3]  # no drain: the batch being written is cut off
    with pytest.raises(GroupClosed):
        await waiting
    with pytest.raises(RuntimeError):
        await commit.submit(4)


async def test_close_writes_what_is_queued_within_its_drain_time_and_returns_the_rest() -> None:
    flushed: list[int] = []
    slow = asyncio.Event()

    async def flush(batch: list[int]) -> list[int]:
        if 9 in batch:
            await slow.wait()  # never set: still writing when the drain time is up
        await asyncio.sleep(0.01)
        if 5 in batch:
            raise ConnectionError("backend down")
        flushed.extend(batch)
        return batch

    commit: GroupCommit[int, int] = GroupCommit(flush, max_batch=2, name="t")
    waiters = [asyncio.create_task(commit.submit(i)) for i in range(10)]
    await asyncio.sleep(0)
    assert sorted(await commit.close(drain_s=1.0)) == [4, 5, 8, 9]
    assert flushed == [0, 1, 2, 3, 6, 7]  # queued at close: still written
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert results[:4] == [0, 1, 2, 3] and results[6:8] == [6, 7]
    assert [type(r) for r in results[4:6]] == [ConnectionError] * 2
    assert [type(r) for r in results[8:]] == [GroupClosed] * 2
