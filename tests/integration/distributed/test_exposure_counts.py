"""Experiment exposure counts in Redis stay exact when a save is retried (real redis-server).

The exposure flush (``controlplane.rollouts.experiments``) re-saves a batch whose save raised,
and a save can raise after Redis applied it (the connection dropped before the replies were
read: a failover, a network cut). The counts the experiment's summary and its SRM check read
(``counts``) were ``HINCRBY``s: the retry counted every exposure of the batch again. Each
exposure is counted once per session and iteration now, however often its batch is written.
"""

from __future__ import annotations

from sessions.exposures import Exposure
from sessions.redis_exposures import RedisExposureStore
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
