"""Readiness probes (``controlplane.health``) on a fake clock, and the version log's write
health signal (``BufferedVersionLog.write_failing_since``) with a backend whose disk fails."""

from __future__ import annotations

import pytest

from controlplane.health import FeedWatch, ShippingWatch, versionlog_problem
from sessions.clock import FakeClock
from sessions.errors import BackendUnavailable
from sessions.versionlog.core import Pending
from sessions.versionlog.memory import MemoryVersionLog


def test_feed_watch_is_healthy_while_the_loop_makes_progress() -> None:
    clock = FakeClock()
    connected = [True]
    watch = FeedWatch(clock, 6.0, lambda: connected[0])
    for _ in range(5):
        clock.advance(5.0)
        watch.progress()
        assert watch.problem() is None
    clock.advance(6.5)
    assert watch.problem() == "NATS not answering policy fetches for 6.5s"
    connected[0] = False
    assert watch.problem() == "NATS disconnected; no policy fetch completed for 6.5s"
    watch.progress()
    assert watch.problem() is None


def test_feed_watch_reports_a_consumer_that_stays_behind_until_it_catches_up() -> None:
    clock = FakeClock()
    watch = FeedWatch(clock, 6.0, lambda: True, lag_s=10.0)
    for pending in (900, 700, 400):  # fetches complete (progress) but events stay pending
        clock.advance(4.0)
        watch.progress()
        watch.behind(pending)
        assert watch.problem() is None
    for _ in range(3):
        clock.advance(4.0)
        watch.progress()
        watch.behind(200)
    assert watch.problem() == (
        "policy consumer not keeping up: 200 events pending, behind for 20.0s"
    )
    assert watch.pending == 200
    watch.begin("cp.policy.p seq 9")  # in a (quick) handler right now: still behind
    assert watch.problem() == (
        "policy consumer not keeping up: 200 events pending, behind for 20.0s"
    )
    watch.end()
    watch.behind(0)  # caught up
    assert watch.problem() is None
    watch.behind(5)  # a new backlog starts its own clock
    clock.advance(9.0)
    watch.progress()
    assert watch.problem() is None


def test_feed_watch_names_a_stuck_handler() -> None:
    clock = FakeClock()
    watch = FeedWatch(clock, 6.0, lambda: True)
    watch.begin("cp.policy.vip seq 7")
    clock.advance(5.0)
    assert watch.problem() is None
    clock.advance(2.0)
    assert watch.problem() == "policy event handler busy for 7.0s (cp.policy.vip seq 7)"
    watch.end()
    assert watch.problem() is None


def test_feed_watch_blames_a_busy_handler_not_nats_for_the_silence() -> None:
    """The fetch that delivered the event completed a little before its handler began:
    while the handler runs, the feed's silence is never reported as NATS not answering."""
    clock = FakeClock()
    watch = FeedWatch(clock, 6.0, lambda: True)
    watch.progress()  # the fetch returned the event
    clock.advance(0.5)  # decoding, signature check
    watch.begin("cp.policy.slow seq 1")
    clock.advance(5.8)  # 6.3 s since the fetch, 5.8 s in the handler
    assert watch.problem() is None
    clock.advance(0.5)
    assert watch.problem() == "policy event handler busy for 6.3s (cp.policy.slow seq 1)"


class _Shipper:
    failing_since: float | None = None
    backlog_bytes = 1234


def test_shipping_watch_allows_a_blip_but_not_a_continuous_failure() -> None:
    clock = FakeClock()
    shipper = _Shipper()
    watch = ShippingWatch(shipper, clock, 6.0)
    assert watch.problem() is None
    shipper.failing_since = clock.monotonic()
    clock.advance(3.0)
    assert watch.problem() is None
    clock.advance(4.0)
    assert watch.problem() == (
        "audit shipping to the durable stream failing for 7.0s (1234 bytes waiting on disk)"
    )
    shipper.failing_since = None
    assert watch.problem() is None


class _FailingDisk(MemoryVersionLog):
    """A memory log whose writes fail while ``broken`` (a fake backend of our own)."""

    broken = False

    async def _write(self, batch: list[Pending]) -> None:
        if self.broken:
            raise BackendUnavailable(
                "version log: write to /data/audit failed: [Errno 27] File too large"
            )
        await super()._write(batch)


async def test_the_version_log_reports_failing_writes_until_one_succeeds() -> None:
    clock = FakeClock()
    vlog = _FailingDisk(clock, flush_interval_s=None)
    assert versionlog_problem(vlog, clock) is None
    vlog.append("s1", version=1, cause="connect", status="sent", config={})
    await vlog.flush()
    vlog.broken = True
    vlog.append("s1", version=2, cause="policy", status="sent", config={"prompt": "x"})
    with pytest.raises(BackendUnavailable):
        await vlog.flush()
    clock.advance(2.0)
    vlog.append("s1", version=3, cause="policy", status="sent", config={"prompt": "y"})
    with pytest.raises(BackendUnavailable):
        await vlog.flush()
    assert versionlog_problem(vlog, clock) == (
        "version log writes failing for 2.0s (2 entries waiting): "
        "version log: write to /data/audit failed: [Errno 27] File too large"
    )
    vlog.broken = False
    await vlog.flush()
    assert versionlog_problem(vlog, clock) is None
    assert [e["seq"] for e in vlog.storage["s1"]] == [1, 2, 3]  # nothing lost, in order
    assert all(r.ok for r in await vlog.verify("s1"))
