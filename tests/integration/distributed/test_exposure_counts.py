"""Experiment exposure counts in Redis stay exact when a save is retried (real redis-server).

The exposure flush (``controlplane.rollouts.experiments``) re-saves a batch whose save raised,
and a save can raise after Redis applied it (the connection dropped before the replies were
read: a failover, a network cut). The counts the experiment's summary and its SRM check read
(``counts``) were ``HINCRBY``s: the retry counted every exposure of the batch again. Each
exposure is counted once per session and iteration now, however often its batch is written.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

from controlplane.rollouts.experiments import merge_exposures
from policies.model import parse_policy
from sessions.exposures import Exposure, time_bin
from sessions.redis_exposures import RedisExposureStore
from tests.integration.service.test_experiments import _doc
from tests.support.servers import ServerProcess


def _exposure(sid: str, variant: str) -> Exposure:
    return Exposure(experiment="tone-test", iteration=1, session_id=sid, variant=variant,
                    policy="tone", version=1, digest=None, first_assigned_at=1.0,
                    exposed_at=2.0, exposed_seq=2, exposed_hash="h" * 64)  # fmt: skip


async def test_a_batch_saved_again_counts_each_exposure_once(own_redis: ServerProcess) -> None:
    store = RedisExposureStore(own_redis.url, prefix="exp:")
    try:
        rows = [_exposure(f"s{i}", "a" if i % 2 else "b") for i in range(10)]
        await store.save(rows, rows)
        await store.save(rows, rows)  # the flush's retry of a batch Redis did apply
        assert await store.counts("tone-test", 1) == {"a": 5, "b": 5}
        later = [_exposure("s10", "a")]
        await store.save(later, later)
        assert await store.counts("tone-test", 1) == {"a": 6, "b": 5}
    finally:
        await store.close()


async def test_a_resumed_session_of_a_counted_call_counts_nothing_and_bins_follow_counts(
    own_redis: ServerProcess,
) -> None:
    """Counts are per call (``call_id``), on every replica: the resumed session's exposure is
    saved (its row) but not counted, and the time bins hold exactly the counted ones."""
    store = RedisExposureStore(own_redis.url, prefix="exp:")
    try:
        first = _exposure("s1", "a")
        other = _exposure("s2", "b")
        other.exposed_at = 200.0  # (another minute)
        assert await store.save([first, other], [first, other]) == [first, other]
        resumed = _exposure("s3", "a")
        resumed.call_id = "s1"  # a resume of s1's call (possibly on another replica)
        assert await store.save([resumed], [resumed]) == []
        assert await store.save([first], [first]) == []  # a retried batch: nothing again
        assert await store.counts("tone-test", 1) == {"a": 1, "b": 1}
        assert await store.timeline("tone-test", 1) == {"a": {0: 1}, "b": {180: 1}}
        assert {r.session_id: r.call for r in await store.rows("tone-test")} == {
            "s1": "s1",
            "s2": "s2",
            "s3": "s1",
        }
    finally:
        await store.close()


async def test_a_session_id_registered_again_keeps_its_first_exposure_in_redis(
    own_redis: ServerProcess,
) -> None:
    """The row of a session id registered again (possibly on another replica) starts
    unexposed and is exposed later: the stored first exposure stands."""
    store = RedisExposureStore(own_redis.url, prefix="exp:")
    try:
        first = _exposure("s1", "a")
        await store.save([first], [first])
        again = _exposure("s1", "a")
        again.first_assigned_at, again.exposed_at = 50.0, None  # its new connection
        again.exposed_seq = again.exposed_hash = None
        await store.save([again], [])
        [row] = await store.rows("tone-test")
        assert (row.first_assigned_at, row.exposed_at, row.exposed_seq) == (1.0, 2.0, 2)
        assert again.exposed_at == 2.0  # the caller's live row carries it too
        later = _exposure("s1", "a")
        later.exposed_at, later.exposed_seq = 60.0, 9
        assert await store.save([later], [later]) == []  # counted once
        [row] = await store.rows("tone-test")
        assert (row.exposed_at, row.exposed_seq) == (2.0, 2)
    finally:
        await store.close()


ROUNDS = 80
SEED = 20261207


async def test_two_sessions_of_one_call_exposed_at_once_on_two_replicas_count_as_exported(
    own_redis: ServerProcess,
) -> None:
    """Two sessions of one call (a resume) exposed at nearly the same moment on two replicas:
    whichever replica's flush reaches Redis first, the row the export says ``counted`` is the
    exposure the counts and the time bins hold, and a reader never sees a call's exposed row
    before its count (seeded rounds of concurrent saves against a real Redis; the export read
    concurrently)."""
    rng = random.Random(SEED)
    a, b, reader = (RedisExposureStore(own_redis.url, prefix="race:") for _ in range(3))
    policy = parse_policy(_doc(key="tone-test"))
    counted: list[Exposure] = []
    snapshots: list[dict[str, bool]] = []
    stop = asyncio.Event()

    async def save(store: RedisExposureStore, row: Exposure, delay: float) -> list[Exposure]:
        await asyncio.sleep(delay)
        return await store.save([row], [row])

    async def export() -> dict[str, bool]:
        exposures = {(r.iteration, r.session_id): r for r in await reader.rows("tone-test")}
        rows = merge_exposures([], exposures, policy)
        for row in rows:  # every exposed call has exactly one counted row, at any moment
            assert row["exposed_at"] is not None
        calls = Counter(row["call_id"] for row in rows if row["counted"])
        assert set(calls) == {row["call_id"] for row in rows}, rows
        assert set(calls.values()) <= {1}, calls
        return {row["session_id"]: row["counted"] for row in rows}

    async def watch() -> None:
        while not stop.is_set():
            snapshots.append(await export())
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    try:
        for n in range(ROUNDS):
            at = 60.0 * (n + 1) - 0.001  # at a time bin's end: the two may bin apart
            first, second = _exposure(f"c{n}-0", "a" if n % 3 else "b"), _exposure(f"c{n}-1", "")
            second.variant = first.variant  # (a resumed call stays in its arm)
            second.call_id = first.session_id
            first.exposed_at, second.exposed_at = at + rng.uniform(0, 0.002), at + 0.001
            results = await asyncio.gather(save(a, first, rng.uniform(0, 0.002)),
                                           save(b, second, rng.uniform(0, 0.002)))  # fmt: skip
            counted += results[0] + results[1]
    finally:
        stop.set()
        await watcher
        for store in (a, b, reader):
            await store.close()
    final = await _final(own_redis)
    by_store = {row.session_id for row in counted}
    assert len(by_store) == ROUNDS  # one exposure counted per call
    assert {sid for sid, yes in final["export"].items() if yes} == by_store
    assert final["counts"] == dict(Counter(row.variant for row in counted))
    bins: dict[str, dict[int, int]] = {}
    for row in counted:
        assert row.exposed_at is not None
        per = bins.setdefault(row.variant, {})
        per[time_bin(row.exposed_at)] = per.get(time_bin(row.exposed_at), 0) + 1
    assert final["timeline"] == bins
    for snapshot in snapshots:  # a decision, once seen, never changes
        assert {sid for sid, yes in snapshot.items() if yes} <= by_store
    # both orders happened (else the rounds proved nothing about the race)
    later = sum(1 for row in counted if row.session_id.endswith("-1"))
    assert 0 < later < ROUNDS


async def _final(redis: ServerProcess) -> dict[str, Any]:
    store = RedisExposureStore(redis.url, prefix="race:")
    try:
        exposures = {(r.iteration, r.session_id): r for r in await store.rows("tone-test")}
        rows = merge_exposures([], exposures, parse_policy(_doc(key="tone-test")))
        return {
            "export": {row["session_id"]: row["counted"] for row in rows},
            "counts": await store.counts("tone-test", 1),
            "timeline": await store.timeline("tone-test", 1),
        }
    finally:
        await store.close()
