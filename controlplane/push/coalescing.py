"""Fleet-level coalescing, sans-I/O: which sessions a policy fan-out still has to write, which
fan-outs wait for a burst to end, and how fast frames may go. Drive it with a fake clock.

- ``FanOutQueue``: the sessions whose new version is still to be written, in order, each at
  most once. A session targeted again before the walk reached it keeps its place and gets
  only its newest version (``PushState`` is latest-wins); one targeted again after it was
  reached goes to the back (one more frame).
- ``Debounce`` (quiet period, maximum delay), per policy: an event with no other event of its
  policy, and no end of a fan-out of it, within the quiet period before it goes at once
  (leading edge: an isolated publish waits for nothing); an event that follows another within
  the quiet period is held until the policy has been quiet that long, but never longer than
  the maximum delay after the first event held. Everything held goes as one fan-out of the
  newest configuration.
- ``Pacer``: frames per second per replica (a token bucket; 0 = unpaced).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["BURST_S", "Debounce", "FanOutQueue", "Pacer"]

T = TypeVar("T", bound=Hashable)
K = TypeVar("K", bound=Hashable)

BURST_S = 0.05  # a paced walk may send this many seconds' worth of frames at once


class FanOutQueue(Generic[T]):
    """Sessions to walk, first in first out, each queued at most once.

    ``add`` returns a ticket: the walk has reached every session added so far once
    ``taken >= ticket``."""

    __slots__ = ("_order", "_queued", "added", "taken")

    def __init__(self) -> None:
        self._order: deque[T] = deque()
        self._queued: set[T] = set()
        self.added = 0  # sessions ever queued
        self.taken = 0  # sessions ever taken

    def add(self, items: Iterable[T]) -> int:
        queued, order = self._queued, self._order
        for item in items:
            if item not in queued:
                queued.add(item)
                order.append(item)
                self.added += 1
        return self.added

    def pop(self) -> T | None:
        if not self._order:
            return None
        item = self._order.popleft()
        self._queued.discard(item)
        self.taken += 1
        return item

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, item: T) -> bool:
        return item in self._queued


@dataclass(slots=True)
class _Hold:
    since: float  # the first event held
    release_at: float
    events: int  # events held (all but the newest are coalesced away)


class Debounce(Generic[K]):
    """Leading-edge debounce per key (a policy id). ``quiet_s == 0`` turns it off."""

    __slots__ = ("_held", "_last", "max_delay_s", "quiet_s")

    def __init__(self, quiet_s: float, max_delay_s: float) -> None:
        if quiet_s < 0 or max_delay_s < 0:
            raise ValueError("quiet period and maximum delay must be >= 0")
        self.quiet_s = quiet_s
        self.max_delay_s = max(max_delay_s, quiet_s)
        # key -> (time of its last event, that event's identity, whether it was held)
        self._last: dict[K, tuple[float, object, bool]] = {}
        self._held: dict[K, _Hold] = {}

    def arrive(self, key: K, now: float, event: object = None) -> bool:
        """An event of ``key`` at ``now``: False when its fan-out goes now, True when it is
        held (``due`` releases it). ``event`` identifies the event: several calls for one
        event (one per group of sessions) get the same answer."""
        if not self.quiet_s:
            return False
        last = self._last.get(key)
        if event is not None and last is not None and last[1] == event:
            return last[2]
        hold = self._held.get(key)
        if hold is not None:
            hold.release_at = min(now + self.quiet_s, hold.since + self.max_delay_s)
            hold.events += 1
            held = True
        elif last is None or now - last[0] >= self.quiet_s:
            held = False
        else:
            self._held[key] = _Hold(now, min(now + self.quiet_s, now + self.max_delay_s), 1)
            held = True
        self._last[key] = (now, event, held)
        return held

    def settled(self, key: K, now: float) -> None:
        """A fan-out of ``key`` finished writing at ``now``: the quiet period counts from
        here too. (Events queued behind a long fan-out, in the bus or the NATS consumer,
        arrive when it is done: they are a burst, not isolated events.)"""
        last = self._last.get(key)
        if last is not None and now > last[0]:
            self._last[key] = (now, last[1], last[2])

    def due(self, now: float) -> list[tuple[K, int]]:
        """Keys whose hold ends by ``now``, with the number of events each held."""
        done = [(k, h.events) for k, h in self._held.items() if h.release_at <= now]
        for key, _ in done:
            del self._held[key]
        return done

    def next_release(self) -> float | None:
        return min((h.release_at for h in self._held.values()), default=None)

    def forget_idle(self, now: float) -> None:
        """Drop what is known of keys quiet for longer than the quiet period (bounded
        memory: one entry per recently published policy)."""
        idle = [
            k for k, v in self._last.items() if now - v[0] >= self.quiet_s and k not in self._held
        ]
        for key in idle:
            del self._last[key]


class Pacer:
    """A token bucket of frames: ``rate`` per second, at most ``BURST_S`` seconds' worth
    at once (at least one frame). ``rate == 0``: unpaced."""

    __slots__ = ("_at", "burst", "rate", "tokens")

    def __init__(self, rate: float) -> None:
        if rate < 0:
            raise ValueError("frames per second must be >= 0")
        self.rate = rate
        self.burst = max(1.0, rate * BURST_S)
        self.tokens = self.burst
        self._at: float | None = None

    @property
    def paced(self) -> bool:
        return self.rate > 0

    def available(self, now: float) -> int:
        """Frames that may go now (unbounded when unpaced: -1)."""
        if not self.rate:
            return -1
        if self._at is not None:
            self.tokens = min(self.burst, self.tokens + (now - self._at) * self.rate)
        self._at = now
        return int(self.tokens)

    def spend(self, frames: int) -> None:
        if self.rate:
            self.tokens -= frames

    def wait_s(self, frames: float = 1.0) -> float:
        """How long until ``frames`` (at most a burst) may go, from the last ``available``."""
        if not self.rate:
            return 0.0
        need = min(frames, self.burst)
        return max(0.0, (need - self.tokens) / self.rate)
