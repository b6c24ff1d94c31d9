"""The audit shipper's pacing (``ShipPacer``): no pass while the local log keeps growing, for
at most the maximum delay; a pass on the first quiet tick (issue #23: one fan-out ships in one
or two passes, each asking the Redis claim fence once, instead of one per interval)."""

from __future__ import annotations

from controlplane.audit.shipper import SHIP_MAX_DELAY_S, ShipPacer


def test_no_pass_while_the_log_grows_then_one_on_the_first_quiet_tick() -> None:
    pacer = ShipPacer(max_delay_s=1.0)
    ticks = [(100, 0.0), (250, 0.2), (400, 0.4), (520, 0.6)]  # a fan-out writing entries
    assert [pacer.due(size, now) for size, now in ticks] == [False] * 4
    assert pacer.due(520, 0.8)  # quiet: ship
    assert pacer.due(520, 1.0)  # nothing new: a pass is due (and finds nothing)


def test_a_log_that_never_stops_growing_still_ships_within_the_maximum_delay() -> None:
    pacer = ShipPacer(max_delay_s=1.0)
    decisions = [pacer.due(100 * (k + 1), 0.2 * k) for k in range(12)]  # grows every tick
    assert decisions == [False] * 5 + [True] + [False] * 5 + [True]


def test_the_default_maximum_delay_is_the_module_constant() -> None:
    pacer = ShipPacer()
    assert not pacer.due(1, 0.0) and not pacer.due(2, SHIP_MAX_DELAY_S - 0.01)
    assert pacer.due(3, SHIP_MAX_DELAY_S)
