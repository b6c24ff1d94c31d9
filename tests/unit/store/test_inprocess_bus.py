"""The in-process policy bus (issue #22): delivery from the bus's own task, in publish order,
never on the publisher's call stack; the handling's error is the publisher's answer."""

from __future__ import annotations

import asyncio

import pytest

from controlplane.errors import Unavailable
from controlplane.intake.bus import InProcessBus, PolicyEvent


def _event(version: int) -> PolicyEvent:
    return PolicyEvent("policy.published", {"id": "p", "version": version}, "admin:test", "")


async def test_events_are_delivered_in_order_by_the_bus_task_not_the_publisher() -> None:
    bus = InProcessBus()
    seen: list[tuple[int, asyncio.Task[object] | None]] = []

    async def handler(event: PolicyEvent) -> None:
        await asyncio.sleep(0)
        seen.append((event.version, asyncio.current_task()))

    bus.subscribe(handler)
    await bus.start()
    try:
        publishers = [asyncio.create_task(bus.publish(_event(v))) for v in (1, 2, 3)]
        await asyncio.gather(*publishers)
        assert [v for v, _ in seen] == [1, 2, 3]
        tasks = {task for _, task in seen}
        assert len(tasks) == 1 and not tasks & set(publishers)  # one delivery task
        await bus.publish(_event(4))  # returns once handled
        assert seen[-1][0] == 4
    finally:
        await bus.close()


async def test_a_handler_error_is_the_publishers_answer_and_delivery_goes_on() -> None:
    bus = InProcessBus()
    handled: list[int] = []

    async def handler(event: PolicyEvent) -> None:
        if event.version == 1:
            raise Unavailable("disk full", code="policy_store_unavailable")
        handled.append(event.version)

    bus.subscribe(handler)
    await bus.start()
    try:
        with pytest.raises(Unavailable, match="disk full"):
            await bus.publish(_event(1))
        await bus.publish(_event(2))
        assert handled == [2]
    finally:
        await bus.close()


async def test_a_handler_that_publishes_does_not_wait_for_itself() -> None:
    bus = InProcessBus()
    handled: list[int] = []

    async def handler(event: PolicyEvent) -> None:
        handled.append(event.version)
        if event.version == 1:
            await bus.publish(_event(2))  # queued: its receipt is not awaited

    bus.subscribe(handler)
    await bus.start()
    try:
        await asyncio.wait_for(bus.publish(_event(1)), 1)
        await asyncio.wait_for(_until(lambda: handled == [1, 2]), 1)
    finally:
        await bus.close()


async def test_a_handler_awaiting_a_task_it_started_that_publishes_does_not_deadlock() -> None:
    """A task started by a handler (e.g. a fan-out's failure path publishing a halt) is part
    of the delivery in progress: it cannot wait for its own event's receipt, which only comes
    after the delivery it runs in. Before: the handler waited for the task, the task for the
    receipt, the receipt for the handler: no event was delivered again."""
    bus = InProcessBus()
    handled: list[int] = []

    async def handler(event: PolicyEvent) -> None:
        handled.append(event.version)
        if event.version == 1:
            await asyncio.create_task(bus.publish(_event(2)))

    bus.subscribe(handler)
    await bus.start()
    try:
        await asyncio.wait_for(bus.publish(_event(1)), 2)
        await asyncio.wait_for(_until(lambda: handled == [1, 2]), 2)
        later = asyncio.create_task(bus.publish(_event(3)))  # not from a handler: waits
        await asyncio.wait_for(later, 2)
        assert handled == [1, 2, 3]
    finally:
        await bus.close()


async def test_a_task_a_handler_started_waits_for_its_receipt_once_that_delivery_is_over() -> None:
    """Only the delivery in progress is exempt: a task that outlives the handler that started
    it (a fan-out walker) publishes like anyone else and gets its event's answer."""
    bus = InProcessBus()
    spawned: list[asyncio.Task[None]] = []
    go = asyncio.Event()

    async def handler(event: PolicyEvent) -> None:
        if event.version == 1:

            async def later() -> None:
                await go.wait()
                await bus.publish(_event(2))

            spawned.append(asyncio.create_task(later()))
        elif event.version == 2:
            raise Unavailable("disk full", code="policy_store_unavailable")

    bus.subscribe(handler)
    await bus.start()
    try:
        await bus.publish(_event(1))
        go.set()
        with pytest.raises(Unavailable, match="disk full"):  # the answer reached it
            await asyncio.wait_for(spawned[0], 2)
    finally:
        await bus.close()


async def test_publishing_on_a_bus_not_running_is_refused_and_close_answers_waiters() -> None:
    bus = InProcessBus()
    with pytest.raises(Unavailable) as refused:
        await bus.publish(_event(1))
    assert refused.value.code == "bus_stopped"
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(event: PolicyEvent) -> None:
        started.set()
        await release.wait()

    bus.subscribe(slow)
    await bus.start()
    first = asyncio.create_task(bus.publish(_event(1)))
    await started.wait()
    second = asyncio.create_task(bus.publish(_event(2)))
    await asyncio.sleep(0)
    await bus.close()
    for waiting in (first, second):
        with pytest.raises(Unavailable, match="closed"):
            await waiting


async def _until(done: object) -> None:
    assert callable(done)
    while not done():
        await asyncio.sleep(0.01)
