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
- **Applying** (every replica, from the bus): the store resolves sessions not running the
  halted version with its fallback; the sessions the halted version or its fallback match
  are re-resolved at once (those not yet pushed drop the halted version; nothing is sent to
  them unless their config really changes). A halt is logged at WARNING with its reason.
- **Per-session policy sets** (``policies_for``, ``reconcile``): a session *pinned* to a
  halted version keeps it: one that, when the halt was applied here, had been written to it,
  had acknowledged it or needed no change for it (its rollout status then). Every other
  session, late joiners included, resolves with the fallback. With nothing halted both are
  the plain active set (one ``engine.reconcile`` call, as before).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

from controlplane.cluster.ports import ClusterPorts
from controlplane.config import Settings
from controlplane.errors import Conflict, ControlPlaneError
from controlplane.intake.bus import PolicyBus, PolicyEvent, rfc3339
from controlplane.intake.store import PolicyStore
from controlplane.metrics import Metrics
from controlplane.push.engine import LiveSession, PushEngine
from controlplane.push.protocol import Push
from controlplane.rollouts.counts import local_counts, version_totals
from controlplane.rollouts.guard import GuardSpec, RolloutGuard
from policies.model import Policy
from sessions.clock import Clock

__all__ = ["DELIVERED", "Halts"]

log = logging.getLogger(__name__)

# rollout statuses (LiveSession.policy_status) meaning the session runs that version
DELIVERED: Final = frozenset({"sent", "acked", "unverified", "skipped", "unchanged"})

Rollback = Callable[[str, int | None], Awaitable[Any]]  # (policy id, version or None: retire)


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
        self._pinned: dict[tuple[str, int], set[str]] = {}  # halted version -> session ids
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
            owners = push.owners or ls.session.provenance
            charged = {owners[f] for f in fields or push.delta if f in owners}
            self.guard.failed(charged.intersection(push.refs))
        except Exception:  # the push path must never fail because of the guard
            log.exception("rollout guard: counting a failure of session %s", ls.session.id)

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

    # -- applying ------------------------------------------------------------------------
    async def apply(self, event: PolicyEvent, received: float) -> str:
        """A ``policy.halted`` event from the bus (every replica, in stream order); returns
        its result, ``applied`` or ``ignored`` (the service counts it, once)."""
        halt = self._store.halt(event)
        if halt is None:
            log.info("policy event %s ignored (not the current version, or already halted)",
                     event.msg_id)  # fmt: skip
            return "ignored"
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
        self._pinned[(event.policy_id, event.version)] = {
            ls.session.id
            for ls in self._engine.live.values()
            if _runs(ls, event.policy_id, event.version)
        }
        fallback = self._store.fallback(event.policy_id)
        halted = self._store.active_policy(event.policy_id)
        relevant = [p for p in (halted, fallback.policy if fallback else None) if p is not None]
        await self.reconcile(self._engine.live.values(), cause="policy", event_at=received,
                             relevant=relevant)  # fmt: skip
        return "applied"

    # -- per-session policy sets ---------------------------------------------------------
    def pins(self, ls: LiveSession) -> frozenset[tuple[str, int]]:
        """The halted versions this session runs (and keeps)."""
        return frozenset(
            key
            for key, sessions in self._pinned.items()
            if ls.session.id in sessions and self._store.is_halted(*key)
        )

    def policies_for(self, ls: LiveSession) -> list[Policy]:
        if not self._store.has_halts:
            self._pinned.clear()  # every halt ended (a newer version, or retired)
            return self._store.for_session(ls.session.id, ls.session.labels)
        return self._store.resolution_set(self.pins(ls), self._outside(ls))

    def _outside(self, ls: LiveSession) -> frozenset[str]:
        """The policies whose current wave this session is not in (docs/policies.md#waves)."""
        return self._store.outside_waves(ls.session.id, ls.session.labels)

    async def reconcile(
        self,
        sessions: Iterable[LiveSession],
        *,
        cause: str,
        event_at: float | None,
        next_turn: tuple[str, float] | None = None,
        relevant: Iterable[Policy] | None = None,
    ) -> None:
        """``engine.reconcile`` with each session's own policy set (one call when nothing is
        halted and no version is between waves; else one per distinct set of pins and
        policies whose wave the session is outside, rarely more than a few)."""
        relevant = None if relevant is None else list(relevant)
        if not self._store.has_halts:
            self._pinned.clear()
        if not self._store.has_halts and not self._store.has_waves:
            await self._engine.reconcile(sessions, self._store.active(), cause=cause,
                                         event_at=event_at, next_turn=next_turn,
                                         relevant=relevant)  # fmt: skip
            return
        groups: dict[tuple[frozenset[tuple[str, int]], frozenset[str]], list[LiveSession]] = {}
        for ls in sessions:
            groups.setdefault((self.pins(ls), self._outside(ls)), []).append(ls)
        for (pins, outside), members in groups.items():
            await self._engine.reconcile(members, self._store.resolution_set(pins, outside),
                                         cause=cause, event_at=event_at, next_turn=next_turn,
                                         relevant=relevant)  # fmt: skip

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


def _runs(ls: LiveSession, policy_id: str, version: int) -> bool:
    status = ls.policy_status.get(policy_id)
    return status is not None and status[0] == version and status[2] in DELIVERED
