"""Readiness probes that say why: each returns ``None`` when healthy, else a short reason.

``/readyz`` (``ControlPlane.readiness``) gates on every probe in ``ClusterPorts.probes``;
a failing probe shows as ``checks[name] = false`` plus ``checks["failing"][name] = reason``.
Reasons name components and durations, never a URL, credential or key.

- ``FeedWatch``: liveness of the policy consumer loop (``NatsPolicyBus``). The loop reports
  progress whenever NATS answered a fetch (messages, or the idle heartbeats of an empty
  one) and after every event it handled; no progress for ``stall_s`` means NATS is down,
  stalled (a stopped server keeps its sockets open and answers nothing) or a handler is stuck.
  It also watches lag: after each fetch the loop reports how many events the consumer still
  has pending; events pending continuously for ``lag_s`` (the loop is not catching up, e.g.
  a burst it chews through slowly) is a problem too, cleared once it has caught up.
- ``versionlog_problem``: the local version log's last write failed and no write has
  succeeded since (entries wait in memory; none is dropped).
- ``ShippingWatch``: the audit shipper to ``CP_AUDIT`` has been failing for ``grace_s``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from sessions.clock import Clock

__all__ = ["FeedWatch", "ShippingWatch", "WriteHealth", "versionlog_problem"]


class FeedWatch:
    """Progress of one consumer loop, read with an injected clock (module docstring)."""

    def __init__(
        self,
        clock: Clock,
        stall_s: float,
        connected: Callable[[], bool],
        lag_s: float | None = None,
    ) -> None:
        self._clock = clock
        self._stall_s = stall_s
        self._lag_s = stall_s if lag_s is None else lag_s
        self._connected = connected
        self._at = clock.monotonic()
        self._busy: tuple[str, float] | None = None
        self.pending = 0  # events the consumer had still to read after its last fetch
        self._behind_since: float | None = None

    def behind(self, pending: int) -> None:
        """After a fetch: ``pending`` events are still waiting in the consumer."""
        self.pending = max(pending, 0)
        if self.pending == 0:
            self._behind_since = None
        elif self._behind_since is None:
            self._behind_since = self._clock.monotonic()

    def progress(self) -> None:
        self._at = self._clock.monotonic()

    def begin(self, what: str) -> None:
        """An event handler started (``what`` names subject and sequence, nothing secret)."""
        self._busy = (what, self._clock.monotonic())

    def end(self) -> None:
        self._busy = None
        self.progress()

    def problem(self) -> str | None:
        now = self._clock.monotonic()
        if self._busy is not None:
            # the loop is in our handler, not waiting on NATS: the silence is the handler's
            # (its clock starts a little after the fetch that delivered the event)
            what, since = self._busy
            if now - since > self._stall_s:
                return f"policy event handler busy for {now - since:.1f}s ({what})"
            return self._lag_problem(now)
        idle = now - self._at
        if idle <= self._stall_s:
            return self._lag_problem(now)
        if not self._connected():
            return f"NATS disconnected; no policy fetch completed for {idle:.1f}s"
        return f"NATS not answering policy fetches for {idle:.1f}s"

    def _lag_problem(self, now: float) -> str | None:
        behind = self._behind_since
        if behind is None or now - behind <= self._lag_s:
            return None
        return (
            f"policy consumer not keeping up: {self.pending} events pending, "
            f"behind for {now - behind:.1f}s"
        )


class WriteHealth(Protocol):
    """What a version log exposes about its writes (``BufferedVersionLog``)."""

    @property
    def write_failing_since(self) -> float | None: ...

    @property
    def last_write_error(self) -> str | None: ...

    @property
    def pending(self) -> int: ...


def versionlog_problem(log: WriteHealth, clock: Clock) -> str | None:
    since = log.write_failing_since
    if since is None:
        return None
    return (
        f"version log writes failing for {clock.monotonic() - since:.1f}s "
        f"({log.pending} entries waiting): {log.last_write_error}"
    )


class ShippingFacts(Protocol):
    @property
    def failing_since(self) -> float | None: ...

    @property
    def backlog_bytes(self) -> int: ...


class ShippingWatch:
    """The audit shipper is unhealthy once it has kept failing for ``grace_s`` (one failed
    attempt is a blip; shipping retries within 2 s)."""

    def __init__(self, shipper: ShippingFacts, clock: Clock, grace_s: float) -> None:
        self._shipper = shipper
        self._clock = clock
        self._grace_s = grace_s

    def problem(self) -> str | None:
        since = self._shipper.failing_since
        if since is None:
            return None
        failing = self._clock.monotonic() - since
        if failing <= self._grace_s:
            return None
        return (
            f"audit shipping to the durable stream failing for {failing:.1f}s "
            f"({self._shipper.backlog_bytes} bytes waiting on disk)"
        )
