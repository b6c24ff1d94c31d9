"""The audit shipper's pacing (``ShipPacer``): a burst (the log grew by a burst in a tick: a
fan-out in progress) holds the pass until the log has not grown for ``quiet_ticks`` ticks in a
row (the fan-out and its acknowledgements are written), for at most the maximum delay; without
a burst a pass is due at every tick (issue #23: one pass per publish and replica, each asking
the Redis claim fence once and shipping one batch, whatever the sessions)."""

from __future__ import annotations

from controlplane.audit.shipper import (
    SHIP_BURST_BYTES,
    SHIP_MAX_DELAY_S,
    SHIP_QUIET_TICKS,
    ShipPacer,
)

KIB = 1024


def test_no_pass_while_a_fan_out_and_its_acknowledgements_write_then_one_when_quiet() -> None:
    pacer = ShipPacer(max_delay_s=3.0, burst_bytes=64 * KIB, quiet_ticks=2)
    ticks = [(100 * KIB, 0.0), (250 * KIB, 0.2), (400 * KIB, 0.4), (520 * KIB, 0.6)]
    assert [pacer.due(size, now) for size, now in ticks] == [False] * 4
    # the acknowledgements' tail: less than a burst per tick, still no pass
    assert not pacer.due(530 * KIB, 0.8) and not pacer.due(531 * KIB, 1.0)
    # a group commit stalls the log for one tick: not the end of the fan-out yet
    assert not pacer.due(531 * KIB, 1.2) and not pacer.due(600 * KIB, 1.4)
    assert not pacer.due(600 * KIB, 1.6)
    assert pacer.due(600 * KIB, 1.8)  # quiet twice in a row: the whole fan-out in one pass
    assert pacer.due(600 * KIB, 2.0)  # no burst: a pass at every tick (it finds nothing)


def test_a_few_entries_ship_at_the_next_tick() -> None:
    pacer = ShipPacer(max_delay_s=3.0, burst_bytes=16 * KIB)
    assert [pacer.due(2 * KIB * (k + 1), 0.2 * k) for k in range(5)] == [True] * 5


def test_a_log_that_never_stops_growing_still_ships_within_the_maximum_delay() -> None:
    pacer = ShipPacer(max_delay_s=1.0, burst_bytes=64 * KIB)
    decisions = [pacer.due(100 * KIB * (k + 1), 0.2 * k) for k in range(12)]
    assert decisions == [False] * 5 + [True] + [False] * 5 + [True]
    slow = ShipPacer(max_delay_s=1.0, burst_bytes=64 * KIB)  # a burst, then a slow trickle
    sizes = [100 * KIB] + [100 * KIB + k * KIB for k in range(1, 7)]
    assert [slow.due(size, 0.2 * k) for k, size in enumerate(sizes)] == [False] * 5 + [True] * 2


def test_the_defaults_are_the_module_constants() -> None:
    pacer = ShipPacer()
    assert pacer.due(SHIP_BURST_BYTES - 1, 0.0)
    size = SHIP_BURST_BYTES - 1 + SHIP_BURST_BYTES
    assert not pacer.due(size, 0.0) and not pacer.due(size + 1, SHIP_MAX_DELAY_S - 0.01)
    assert pacer.due(size + 2, SHIP_MAX_DELAY_S)
    quiet = ShipPacer()
    assert not quiet.due(SHIP_BURST_BYTES, 0.0)
    decisions = [quiet.due(SHIP_BURST_BYTES, 0.2 * (k + 1)) for k in range(SHIP_QUIET_TICKS)]
    assert decisions == [False] * (SHIP_QUIET_TICKS - 1) + [True]
