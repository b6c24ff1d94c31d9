"""Prometheus metrics (DESIGN.md §4). One ``Metrics`` object per app, on its own registry.

No per-session labels: label values are kinds, results, codes, policy ids and versions.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["LATENCY_BUCKETS", "Metrics", "PushMetrics", "observe_many"]

# from 1 ms to 30 s
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


def observe_many(histogram: Histogram, amounts: Sequence[float]) -> None:
    """``histogram.observe(a)`` for every amount, with one increment per bucket touched.

    ``prometheus_client`` has no bulk API, and a per-session ``observe`` in a 10,000-session
    fan-out cost a fifth of the fan-out (docs/benchmarks.md). This counts with ``bisect``
    against the histogram's bounds (``amount <= bound``, as ``observe`` does) and adds the
    counts; on a ``prometheus_client`` without those internals it falls back to ``observe``.
    Unlabelled histograms (or one ``labels(...)`` child) only.
    """
    if not amounts:
        return
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for amount in amounts:
            histogram.observe(amount)
        return
    counts = [0] * len(bounds)
    for amount in amounts:
        counts[bisect_left(bounds, amount)] += 1  # the last bound is +Inf
    total.inc(sum(amounts))
    for bucket, count in zip(buckets, counts, strict=True):
        if count:
            bucket.inc(count)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        p = "controlplane_"
        self.sessions = Gauge(
            p + "sessions", "Live sessions by kind and state", ["kind", "state"], registry=r
        )
        self.policy_events = Counter(
            p + "policy_events_total",
            "Policy events by type and result",
            ["type", "result"],
            registry=r,
        )
        self.pushes = Counter(
            p + "pushes_total", "Pushes by session kind and result", ["kind", "result"], registry=r
        )
        self.push_latency = Histogram(
            p + "push_latency_seconds",
            "Policy event received to frame written",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.apply_latency = Histogram(
            p + "apply_latency_seconds",
            "Frame written to acknowledgement",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.convergence = Histogram(
            p + "convergence_seconds",
            "Policy event to last targeted session written",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.sessions_at_version = Gauge(
            p + "sessions_at_version",
            "Sessions running a policy version (acknowledged, or nothing to send; Streaming v3:"
            " written); not pending, in flight or refused",
            ["policy", "version"],
            registry=r,
        )
        self.coalesced = Counter(
            p + "coalesced_total", "Superseded versions never sent", registry=r
        )
        # fleet-level coalescing (controlplane.push.fanout)
        self.fanouts = Counter(
            p + "fanouts_total",
            "Policy fan-outs with sessions to write, by start: immediate, joined (a walk in"
            " progress: sessions not reached yet get only the newest), debounced (held)",
            ["start"],
            registry=r,
        )
        self.fanouts_coalesced = Counter(
            p + "fanouts_coalesced_total",
            "Held policy fan-outs folded into a newer one of the same policy (never walked)",
            registry=r,
        )
        self.fanout_hold = Histogram(
            p + "fanout_hold_seconds",
            "How long the debounce held a policy's fan-outs (first held to released)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rejects = Counter(
            p + "rejects_total", "Rejections by kind and code", ["kind", "code"], registry=r
        )
        self.audit_appends = Counter(
            p + "audit_appends_total", "Version-log entries appended", registry=r
        )
        self.audit_append_failures = Counter(
            p + "audit_append_failures_total", "Version-log appends that failed", registry=r
        )
        self.audit_shipped = Counter(
            p + "audit_shipped_total",
            "Version-log entries stored in the durable audit stream (distributed mode)",
            registry=r,
        )
        self.audit_fenced = Counter(
            p + "audit_fenced_total",
            "Local version-log entries not shipped: another node holds the session id's trail",
            registry=r,
        )
        self.audit_ship_backlog = Gauge(
            p + "audit_ship_backlog_bytes",
            "Bytes of local version log not yet in the durable audit stream",
            registry=r,
        )
        self.audit_verify_failures = Counter(
            p + "audit_verify_failures_total",
            "Audit verifications that found tampering",
            registry=r,
        )
        self.rollout_halts = Counter(
            p + "rollout_halts_total",
            "Policy versions the rollout guard halted, counted by the replica that decided",
            ["policy", "action"],
            registry=r,
        )
        # progressive waves (controlplane.rollouts.waves); policies are few: bounded labels
        self.rollout_wave_percent = Gauge(
            p + "rollout_wave_percent",
            "Current wave (percent of sessions) of the active version with rollout.waves",
            ["policy"],
            registry=r,
        )
        self.rollout_wave_stalled = Gauge(
            p + "rollout_wave_stalled",
            "1 while the active version with rollout.waves is halted at its current wave",
            ["policy"],
            registry=r,
        )
        self.rollout_wave_steps = Counter(
            p + "rollout_wave_steps_total",
            "Wave steps applied by this replica (advance, promote, pause, resume)",
            ["policy", "action"],
            registry=r,
        )
        self.client_gone = Counter(
            p + "gateway_client_gone_total",
            "Gateway clients that left during the upstream handshake (upstream leg closed)",
            ["kind"],
            registry=r,
        )
        self.experiment_exposures = Counter(
            p + "experiment_exposures_total",
            "Calls exposed to an experiment variant (first run of its configuration; "
            "a resumed call counts once)",
            ["experiment", "variant"],
            registry=r,
        )
        self.experiment_srm_p_value = Gauge(
            p + "experiment_srm_p_value",
            "Sample-ratio-mismatch chi-squared p-value of an experiment (at its last summary)",
            ["experiment"],
            registry=r,
        )
        self.rate_limited = Counter(
            p + "rate_limited_total",
            "REST requests refused 429 by a per-token limit (docs/security.md#rate-limits)",
            ["route"],
            registry=r,
        )
        self.rate_limit_fallback = Counter(
            p + "rate_limit_fallback_total",
            "Expensive reads limited by this replica's own bucket while the shared (Redis) "
            "one did not answer (docs/security.md#rate-limits)",
            registry=r,
        )
        self.ready = Gauge(p + "ready", "1 when this replica reports ready", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class PushMetrics:
    """The push engine's observations (``controlplane.push.observer.PushObserver``) on the
    Prometheus metric set; wired by the composition root (the engine imports no metrics)."""

    __slots__ = ("_m",)

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def pushed(self, counts: Mapping[tuple[str, str], int]) -> None:
        for (kind, result), n in counts.items():
            self._m.pushes.labels(kind, result).inc(n)

    def push_latencies(self, seconds: Sequence[float]) -> None:
        observe_many(self._m.push_latency, seconds)

    def apply_latency(self, seconds: float) -> None:
        self._m.apply_latency.observe(seconds)

    def converged(self, seconds: float) -> None:
        self._m.convergence.observe(seconds)

    def superseded(self, versions: int) -> None:
        self._m.coalesced.inc(versions)

    def log_appended(self, entries: int) -> None:
        self._m.audit_appends.inc(entries)

    def log_append_failed(self) -> None:
        self._m.audit_append_failures.inc()

    def rejected(self, kind: str, code: str) -> None:
        self._m.rejects.labels(kind, code).inc()

    def live(
        self, sessions: Mapping[tuple[str, str], int], at_version: Mapping[tuple[str, str], int]
    ) -> None:
        self._m.sessions.clear()
        for (kind, state), n in sessions.items():
            self._m.sessions.labels(kind, state).set(n)
        self._m.sessions_at_version.clear()
        for (policy, version), n in at_version.items():
            self._m.sessions_at_version.labels(policy, version).set(n)

    def fanout(self, start: str) -> None:
        self._m.fanouts.labels(start).inc()

    def fanouts_coalesced(self, fanouts: int) -> None:
        self._m.fanouts_coalesced.inc(fanouts)

    def fanout_held(self, seconds: float) -> None:
        self._m.fanout_hold.observe(seconds)
