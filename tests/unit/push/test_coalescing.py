"""Fleet-level coalescing, sans-I/O (controlplane.push.coalescing), driven by a fake clock:
the walk queue (sessions not yet reached keep their place, reached ones go to the back), the
leading-edge debounce (an isolated event goes at once; a burst becomes one release of the
newest, within the maximum delay) and the frame pacer."""

from __future__ import annotations

import pytest

from controlplane.push.coalescing import BURST_S, Debounce, FanOutQueue, Pacer
from sessions.clock import FakeClock


# -- the walk queue ---------------------------------------------------------------------------
def test_a_session_queued_again_before_it_is_reached_keeps_its_place() -> None:
    queue: FanOutQueue[str] = FanOutQueue()
    first = queue.add(["a", "b", "c"])
    assert first == 3
    assert queue.pop() == "a"
    # a newer version targets all three: b and c were not reached, a was
    second = queue.add(["a", "b", "c"])
    assert second == 4  # only a is queued again
    assert [queue.pop(), queue.pop(), queue.pop(), queue.pop()] == ["b", "c", "a", None]
    assert queue.taken == 4 and len(queue) == 0


def test_tickets_are_reached_in_order() -> None:
    queue: FanOutQueue[str] = FanOutQueue()
    t1 = queue.add(["a", "b"])
    t2 = queue.add(["b", "c"])
    queue.pop()
    assert queue.taken < t1
    queue.pop()
    assert queue.taken >= t1 and queue.taken < t2
    queue.pop()
    assert queue.taken >= t2
    assert "c" not in queue


# -- the debounce -----------------------------------------------------------------------------
def test_an_isolated_event_goes_at_once_and_events_spaced_wider_than_the_quiet_period_too() -> None:
    clock = FakeClock()
    debounce: Debounce[str] = Debounce(quiet_s=0.25, max_delay_s=1.0)
    assert debounce.arrive("p", clock.monotonic(), event=1) is False
    clock.advance(0.25)
    assert debounce.arrive("p", clock.monotonic(), event=2) is False
    clock.advance(5)
    assert debounce.arrive("p", clock.monotonic(), event=3) is False
    assert debounce.next_release() is None


def test_a_burst_is_held_until_quiet_then_released_once_with_its_count() -> None:
    clock = FakeClock()  # (steps are binary fractions: exact sums)
    debounce: Debounce[str] = Debounce(quiet_s=0.25, max_delay_s=1.0)
    start = clock.monotonic()
    assert debounce.arrive("p", start, event=0) is False  # leading edge: at once
    for i in range(1, 5):  # four more, 125 ms apart
        clock.advance(0.125)
        assert debounce.arrive("p", clock.monotonic(), event=i) is True
    # the last one came at +0.5: released once the policy was quiet for 0.25 s
    assert debounce.next_release() == start + 0.75
    clock.advance(0.125)
    assert debounce.due(clock.monotonic()) == []
    clock.advance(0.125)
    assert debounce.due(clock.monotonic()) == [("p", 4)]
    assert debounce.next_release() is None


def test_a_continuous_stream_is_released_every_maximum_delay() -> None:
    clock = FakeClock()
    debounce: Debounce[str] = Debounce(quiet_s=0.25, max_delay_s=0.5)
    debounce.arrive("p", clock.monotonic(), event=0)
    released: list[float] = []
    for i in range(1, 21):  # 2.5 s of events every 125 ms
        clock.advance(0.125)
        for _ in debounce.due(clock.monotonic()):
            released.append(clock.monotonic() - 1000.0)
        debounce.arrive("p", clock.monotonic(), event=i)
    # first held at +0.125, released at +0.625 (the maximum delay), held again from there
    assert released == [0.625, 1.125, 1.625, 2.125]


def test_calls_for_one_event_share_its_decision_and_policies_are_independent() -> None:
    clock = FakeClock()
    debounce: Debounce[str] = Debounce(quiet_s=0.25, max_delay_s=1.0)
    now = clock.monotonic()
    assert debounce.arrive("p", now, event="e1") is False
    assert debounce.arrive("p", now, event="e1") is False  # another group of the same event
    assert debounce.arrive("q", now, event="e2") is False  # another policy: isolated
    clock.advance(0.0625)
    assert debounce.arrive("p", clock.monotonic(), event="e3") is True
    assert debounce.arrive("p", clock.monotonic(), event="e3") is True
    clock.advance(0.25)
    assert debounce.due(clock.monotonic()) == [("p", 1)]


def test_an_event_queued_behind_a_long_fan_out_of_its_policy_is_held() -> None:
    """Published 0.1 s after the first, but delivered only when the first one's fan-out
    (0.5 s) was done: the quiet period counts from that end, not from the first arrival."""
    clock = FakeClock()
    debounce: Debounce[str] = Debounce(quiet_s=0.25, max_delay_s=1.0)
    assert debounce.arrive("p", clock.monotonic(), event=1) is False
    clock.advance(0.5)
    debounce.settled("p", clock.monotonic())
    assert debounce.arrive("p", clock.monotonic(), event=2) is True
    clock.advance(0.25)
    assert debounce.due(clock.monotonic()) == [("p", 1)]
    clock.advance(0.5)
    debounce.settled("p", clock.monotonic() - 0.5)  # its last fan-out ended 0.5 s ago
    assert debounce.arrive("p", clock.monotonic(), event=3) is False  # quiet since: at once


def test_a_zero_quiet_period_turns_the_debounce_off() -> None:
    debounce: Debounce[str] = Debounce(quiet_s=0.0, max_delay_s=0.0)
    assert not any(debounce.arrive("p", 1000.0 + i * 0.001, event=i) for i in range(10))


def test_forget_idle_keeps_only_recent_policies() -> None:
    clock = FakeClock()
    debounce: Debounce[str] = Debounce(quiet_s=0.2, max_delay_s=1.0)
    debounce.arrive("old", clock.monotonic(), event=1)
    clock.advance(1)
    debounce.arrive("new", clock.monotonic(), event=2)
    debounce.forget_idle(clock.monotonic())
    clock.advance(0.1)
    assert debounce.arrive("old", clock.monotonic(), event=3) is False  # forgotten: isolated
    assert debounce.arrive("new", clock.monotonic(), event=4) is True


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="quiet period"):
        Debounce(quiet_s=-1, max_delay_s=1)
    with pytest.raises(ValueError, match="frames per second"):
        Pacer(-5)


# -- pacing -----------------------------------------------------------------------------------
def test_an_unpaced_pacer_never_waits() -> None:
    pacer = Pacer(0)
    assert not pacer.paced
    assert pacer.wait_s(10_000) == 0.0


def test_the_pacer_lets_a_burst_go_then_the_rate() -> None:
    clock = FakeClock()
    pacer = Pacer(800)  # 800 frames per second, bursts of 40
    assert pacer.burst == 800 * BURST_S == 40
    assert pacer.available(clock.monotonic()) == 40
    pacer.spend(40)
    assert pacer.available(clock.monotonic()) == 0
    assert pacer.wait_s(10) == pytest.approx(0.0125)
    clock.advance(0.015625)
    assert pacer.available(clock.monotonic()) == 12  # 12.5 tokens
    pacer.spend(12)
    clock.advance(10)  # idle for long: never more than one burst at once
    assert pacer.available(clock.monotonic()) == 40


def test_frames_over_a_second_stay_within_the_rate() -> None:
    clock = FakeClock()
    pacer = Pacer(500)
    sent = 0
    while clock.monotonic() < 1001.0:
        n = pacer.available(clock.monotonic())
        pacer.spend(n)
        sent += n
        clock.advance(max(pacer.wait_s(25), 0.001))
    assert 500 <= sent <= 500 + pacer.burst
