"""The audit shipper's pacing (``ShipPacer``): no pass while the local log grows by a burst
(a fan-out in progress) at every tick, for at most the maximum delay; a pass on the first
slower tick (issue #23: a large fan-out ships in one or two passes, each asking the Redis
claim fence once, instead of one per interval); a slowly growing log ships at every tick."""

from __future__ import annotations

from controlplane.audit.shipper import SHIP_BURST_BYTES, SHIP_MAX_DELAY_S, ShipPacer

KIB = 1024


def test_no_pass_while_a_fan_out_writes_then_one_on_the_first_slower_tick() -> None:
    pacer = ShipPacer(max_delay_s=1.0, burst_bytes=64 * KIB)
    ticks = [(100 * KIB, 0.0), (250 * KIB, 0.2), (400 * KIB, 0.4), (520 * KIB, 0.6)]
    assert [pacer.due(size, now) for size, now in ticks] == [False] * 4
    assert pacer.due(530 * KIB, 0.8)  # grew by less than a burst: ship
    assert pacer.due(530 * KIB, 1.0)  # nothing new: a pass is due (and finds nothing)


def test_a_few_entries_ship_at_the_next_tick() -> None:
    pacer = ShipPacer(max_delay_s=1.0, burst_bytes=64 * KIB)
    assert [pacer.due(2 * KIB * (k + 1), 0.2 * k) for k in range(5)] == [True] * 5


def test_a_log_that_never_stops_bursting_still_ships_within_the_maximum_delay() -> None:
    pacer = ShipPacer(max_delay_s=1.0, burst_bytes=64 * KIB)
    decisions = [pacer.due(100 * KIB * (k + 1), 0.2 * k) for k in range(12)]
    assert decisions == [False] * 5 + [True] + [False] * 5 + [True]


def test_the_defaults_are_the_module_constants() -> None:
    pacer = ShipPacer()
    assert pacer.due(SHIP_BURST_BYTES - 1, 0.0)
    size = SHIP_BURST_BYTES - 1 + SHIP_BURST_BYTES
    assert not pacer.due(size, 0.0) and not pacer.due(size * 2, SHIP_MAX_DELAY_S - 0.01)
    assert pacer.due(size * 4, SHIP_MAX_DELAY_S)
