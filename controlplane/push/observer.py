"""What the push engine reports, as callbacks: the engine imports no metrics library.

``PushObserver`` is the port; the composition root (``controlplane.app``) wires it to the
Prometheus metric set (``controlplane.metrics.PushMetrics``). ``Tally`` batches the per-push
counts so the observer is called once per fan-out (or sweep), not once per session: a
per-session ``Histogram.observe`` was a fifth of a 10,000-session fan-out
(docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

__all__ = ["NO_OBSERVER", "PushObserver", "Tally"]

Counts = Mapping[tuple[str, str], int]


class PushObserver(Protocol):
    """The engine's observations (DESIGN.md §4 metrics). Called synchronously; must not
    raise."""

    def pushed(self, counts: Counts) -> None:
        """Pushes by (session kind, result) since the last call."""

    def push_latencies(self, seconds: Sequence[float]) -> None:
        """Policy event received -> frame written, one amount per frame."""

    def apply_latency(self, seconds: float) -> None:
        """Frame written -> acknowledgement."""

    def converged(self, seconds: float) -> None:
        """Policy event -> the last targeted session written (once per fan-out)."""

    def superseded(self, versions: int) -> None:
        """Per-session versions replaced by a newer one before they were sent."""

    def log_appended(self, entries: int) -> None:
        """Version-log entries appended."""

    def log_append_failed(self) -> None:
        """One version-log append failed."""

    def rejected(self, kind: str, code: str) -> None:
        """An upstream (or a control-channel app) refused a push, wholly or in part."""

    def live(self, sessions: Counts, at_version: Counts) -> None:
        """Live sessions by (kind, state) and by (policy, version) they run: replaces the
        previous figures."""

    def fanout(self, start: str) -> None:
        """A policy fan-out with sessions to write, by how it started: ``immediate`` (walked
        at once), ``joined`` (its sessions joined a walk in progress: those not reached yet
        get only the newest version) or ``debounced`` (held until its policy was quiet)."""

    def fanouts_coalesced(self, fanouts: int) -> None:
        """Held fan-outs folded into a newer one of the same policy (never walked)."""

    def fanout_held(self, seconds: float) -> None:
        """How long the debounce held a policy's fan-outs (first held -> released)."""


class _NoObserver:
    """Observes nothing (an engine built without a metrics port, e.g. in unit tests)."""

    def pushed(self, counts: Counts) -> None:
        pass

    def push_latencies(self, seconds: Sequence[float]) -> None:
        pass

    def apply_latency(self, seconds: float) -> None:
        pass

    def converged(self, seconds: float) -> None:
        pass

    def superseded(self, versions: int) -> None:
        pass

    def log_appended(self, entries: int) -> None:
        pass

    def log_append_failed(self) -> None:
        pass

    def rejected(self, kind: str, code: str) -> None:
        pass

    def live(self, sessions: Counts, at_version: Counts) -> None:
        pass

    def fanout(self, start: str) -> None:
        pass

    def fanouts_coalesced(self, fanouts: int) -> None:
        pass

    def fanout_held(self, seconds: float) -> None:
        pass


NO_OBSERVER: PushObserver = _NoObserver()


class Tally:
    """Per-push observations, batched until ``flush`` (after a fan-out, on every sweep, and
    before ``/metrics`` renders)."""

    __slots__ = ("appended", "latencies", "pushed", "superseded")

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.superseded = 0
        self.pushed: dict[tuple[str, str], int] = {}
        self.appended = 0

    def count_push(self, kind: str, result: str) -> None:
        key = (kind, result)
        self.pushed[key] = self.pushed.get(key, 0) + 1

    def flush(self, observer: PushObserver) -> None:
        if self.latencies:
            latencies, self.latencies = self.latencies, []
            observer.push_latencies(latencies)
        if self.pushed:
            pushed, self.pushed = self.pushed, {}
            observer.pushed(pushed)
        if self.appended:
            observer.log_appended(self.appended)
            self.appended = 0
        if self.superseded:
            observer.superseded(self.superseded)
            self.superseded = 0
