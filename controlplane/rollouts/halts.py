"""Halted policy versions, the service's side (issue #8, docs/policies.md#guard).

``Halts`` is built by ``ControlPlane`` and owns the rollout guard (``controlplane.rollouts.guard``):

- **Counting.** ``push_failed`` (the push engine's ``on_failure``) charges a failure to the
  policy versions that owned a field that failed: of a refusal, only the fields refused (the
  ones the upstream names, else every field of the push: ``PushState.rejected``); of a
  timeout, every field the push carried. A policy riding along in the same push is not
  charged. Refusals count on any session; acknowledgement timeouts
  only on Voice Agent sessions: Streaming v3 has no acknowledgement.
- **Deciding** (``GuardPorts``): the version guarded is the policy's active, unhalted one;
  the totals are this replica's live rollout rows and failure window plus the rows the other
  replicas publish, so the ratio is cluster-wide. A breach publishes one ``policy.halted``
  event (JetStream dedupes a second decision by ``Nats-Msg-Id: <id>:<version>:halted``;
  the loser's publish answers 409 and it does nothing more), counts
  ``rollout_halts_total{policy, action}`` and, with ``on_breach: rollback``, publishes the
  fallback's document as a new version (cause ``rollback``), or retires the policy when it
  has no earlier good version.
- **Applied** (``applied``, every replica, from the service's event handler once the store
  took the event): counted if decided here, logged at WARNING with its reason, its failures
  kept for the rollout rows. Which sessions keep the halted version and which resolve its
  fallback is data the handler reads (``controlplane.service.events``), not this class:
  no other event passes through here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from controlplane.cluster.ports import ClusterPorts
from controlplane.config import Settings
from controlplane.errors import Conflict, ControlPlaneError
from controlplane.intake.bus import PolicyBus, PolicyEvent, rfc3339
from controlplane.intake.store import PolicyStore
from controlplane.metrics import Metrics
from controlplane.push.engine import PushEngine
from controlplane.push.live import LiveSession
from controlplane.push.protocol import Push
from controlplane.rollouts.counts import local_counts, version_totals
from controlplane.rollouts.guard import GuardSpec, RolloutGuard
from policies.provenance import PolicyRef
from sessions.clock import Clock

__all__ = ["Halts"]

log = logging.getLogger(__name__)

Rollback = Callable[[str, int | None], Awaitable[Any]]  # (policy id, version or None: retire)


def _charged(ls: LiveSession, push: Push, fields: tuple[str, ...]) -> set[PolicyRef]:
    """The policy versions of ``push`` that owned ``fields`` (none: every field of the push)
    when it was taken."""
    owners = push.owners or ls.session.provenance
    return {owners[f] for f in fields or push.delta if f in owners}.intersection(push.refs)


class Halts:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock,
        metrics: Metrics,
        store: PolicyStore,
        engine: PushEngine,
        bus: PolicyBus,
        cluster: ClusterPorts,
        rollback: Rollback,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._metrics = metrics
        self._store = store
        self._engine = engine
        self._bus = bus
        self._cluster = cluster  # its peers: the other replicas' rollout rows (or None)
        self._rollback = rollback
        # halts this replica is publishing -> their action: counted (rollout_halts_total) in
        # the same step that makes the halt visible here (``apply``), never after it
        self._deciding: dict[tuple[str, int], str] = {}
        # the guard failures that halted a version, kept for its rollout rows (the window
        # forgets them at the halt); one entry per halt: bounded by the halts
        self._halt_failures: dict[str, list[dict[str, Any]]] = {}
        self.guard = RolloutGuard(
            self, clock=clock, check_interval_s=settings.rollout_sync_interval_s
        )
        engine.on_failure = self.push_failed

    async def start(self) -> None:
        await self.guard.start()

    async def close(self) -> None:
        await self.guard.close()

    # -- counting ------------------------------------------------------------------------
    def push_failed(
        self, ls: LiveSession, push: Push, reason: str, fields: tuple[str, ...] = ()
    ) -> None:
        """``fields``: what failed (a refusal: the fields refused; a timeout: every field of the
        push), charged to the policy versions that owned them when the push was taken."""
        if reason == "timeout" and ls.session.kind != "voice-agent-v1":
            return  # Streaming v3 cannot acknowledge: silence is not a failure
        try:
            self.guard.failed(_charged(ls, push, fields), (ls.session.id, push.version))
        except Exception:  # the push path must never fail because of the guard
            log.exception("rollout guard: counting a failure of session %s", ls.session.id)

    def answered_late(self, ls: LiveSession, push: Push, refused: tuple[str, ...]) -> None:
        """``push`` timed out (counted, on a Voice Agent session) and its answer came after
        all: the timeout is retracted while the guard's window still holds it (a halt already
        decided stands); ``refused``: the fields the late answer refused, counted as a
        refusal in time would have been (docs/policies.md#guard)."""
        try:
            retracted = self.guard.retract(_charged(ls, push, ()), (ls.session.id, push.version))
            if refused and (retracted or ls.session.kind != "voice-agent-v1"):
                self.guard.failed(_charged(ls, push, refused), (ls.session.id, push.version))
        except Exception:  # the push path must never fail because of the guard
            log.exception("rollout guard: a late answer of session %s", ls.session.id)

    # -- GuardPorts ----------------------------------------------------------------------
    def guarded(self, policy_id: str) -> tuple[int, GuardSpec] | None:
        policy = self._store.active_policy(policy_id)
        if policy is None or policy.version is None or self._store.halted(policy_id):
            return None
        return policy.version, GuardSpec.of(policy, self._settings)

    async def totals(self, policy_id: str, version: int) -> tuple[int, int]:
        parts = self.local_rows(policy_id)
        if self._cluster.peers is not None:
            parts += await self._cluster.peers.rollout_rows(policy_id)
        return version_totals(parts, version)

    async def halt(self, policy_id: str, version: int, detail: dict[str, Any]) -> None:
        record = self._store.latest(policy_id)
        if record.version != version or record.retired or self._store.halted(policy_id):
            return
        action = str(detail.get("on_breach", "halt"))
        fallback = self._store.fallback(policy_id)
        to = fallback.version if fallback is not None and action == "rollback" else None
        detail = {**detail, "decided_by": self._settings.node_id, "rollback_to": to}
        waves = self._store.waves(policy_id)
        if waves is not None and waves.policy.version == version:  # stalled at this wave
            detail["wave"] = {"index": waves.index, "percent": float(waves.percent)}
        event = PolicyEvent(
            "policy.halted", record.policy.document(), f"guard:{self._settings.node_id}",
            rfc3339(self._clock.now()), cause="guard", halt=detail,
        )  # fmt: skip
        key = (policy_id, version)
        self._deciding[key] = action
        try:
            await self._bus.publish(event)
        except Conflict as exc:  # decided elsewhere first, or a newer version meanwhile
            log.info("policy %s v%d: halt not published (%s)", policy_id, version, exc.message)
            return
        finally:
            counted = self._deciding.pop(key, None) is None  # (by apply, inside the publish)
        if not counted:  # published, not applied here yet (a bus that delivers later)
            self._metrics.rollout_halts.labels(policy_id, action).inc()
        if action != "rollback":
            return
        try:
            await self._rollback(policy_id, to)
        except ControlPlaneError as exc:
            log.warning("policy %s v%d halted, but the automatic %s failed: %s", policy_id,
                        version, "rollback" if to else "retirement", exc.message)  # fmt: skip

    # -- applied -------------------------------------------------------------------------
    def applied(self, event: PolicyEvent) -> None:
        """The store took this ``policy.halted`` event (every replica, in stream order; the
        service's event handler then pins the sessions running the version and re-resolves
        the others: controlplane.service.events)."""
        action = self._deciding.pop((event.policy_id, event.version), None)
        if action is not None:  # decided here: counted as it becomes visible, not after
            self._metrics.rollout_halts.labels(event.policy_id, action).inc()
        d = dict(event.halt or {})
        log.warning(
            "policy %s version %d HALTED by %s: %s of %s targeted sessions failed (ratio %s, "
            "max %s, min sessions %s, window %ss); on breach: %s",
            event.policy_id, event.version, event.actor, d.get("failed"), d.get("targeted"),
            d.get("ratio"), d.get("max_failure_ratio"), d.get("min_sessions"),
            d.get("window_s"), d.get("on_breach"),
        )  # fmt: skip
        self._keep_halt_failures(event.policy_id, event.version)
        self.guard.window.forget(event.policy_id)

    # -- rollout status ------------------------------------------------------------------
    def local_rows(self, policy_id: str) -> list[list[dict[str, Any]]]:
        """This replica's rollout rows of one policy: live sessions, then guard failures."""
        live = local_counts(self._engine.live.values(), only=policy_id).get(policy_id, [])
        failures = self.guard.window.rows(policy_id).get(policy_id, [])
        return [live, failures + self._halt_failures.get(policy_id, [])]

    def with_failures(self, counts: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        """This replica's published rollout rows plus its guard failure rows."""
        for policy_id, rows in self.guard.window.rows().items():
            counts[policy_id] = [*counts.get(policy_id, []), *rows]
        for policy_id, rows in self._halt_failures.items():
            counts[policy_id] = [*counts.get(policy_id, []), *rows]
        return counts

    def _keep_halt_failures(self, policy_id: str, version: int) -> None:
        """The halted version's failures stay in its rollout rows after the window forgets
        them (``GET …/rollout`` keeps showing what caused the halt). Per replica: each
        replica keeps its own share, and the published sum is the cluster's."""
        rows = [r for r in self.guard.window.rows(policy_id).get(policy_id, [])
                if r["version"] == version]  # fmt: skip
        kept = [r for r in self._halt_failures.get(policy_id, []) if r["version"] != version]
        if rows or kept:
            self._halt_failures[policy_id] = kept + rows

    def status(self, policy_id: str) -> dict[str, Any]:
        """``state``, ``halt`` and ``guard`` of the rollout status (docs/api.md)."""
        state, halt = self._store.rollout_state(policy_id)
        latest = self._store.latest(policy_id)
        return {"state": state, "halt": None if halt is None else halt.as_dict(),
                "guard": GuardSpec.of(latest.policy, self._settings).document()}  # fmt: skip
