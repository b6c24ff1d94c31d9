"""One policy event, from the bus to the push engine (docs/architecture.md, the walk).

``PolicyEvents.on_event`` is the handler the bus calls, the same in both modes (the in-process
bus's delivery task, the NATS consumer): the intake store applies the event (durably first in
embedded mode, ``controlplane.intake.files``), the live sessions are split by the policy set
they resolve with (``PolicySets``: halts and waves as data, below) and the push engine
re-resolves them and pushes what changed. Each event is counted here exactly once
(``controlplane_policy_events_total``).

``PolicySets``: which policies each live session resolves with. With nothing halted and no
version between waves every session resolves with the store's active set (``groups`` answers
one group: one ``engine.reconcile`` call). Otherwise a session's set is
``PolicyStore.resolution_set(pins, outside)``:

- **pins** (docs/policies.md#guard): the halted ``(policy, version)`` pairs this session keeps.
  When a halt is applied here (``pin``), the sessions that had been written that version, had
  acknowledged it or needed no change for it (their rollout status, ``DELIVERED``) keep it;
  every other session, late joiners included, resolves with the halted policy's fallback.
- **outside** (docs/policies.md#waves): the policies whose current wave this session is not
  in; it resolves their previous version.

Read by the handler for a fan-out and by the edges for one session
(``ControlPlane.policies_for``); ``Halts`` and ``Waves`` only decide and publish.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Final

from controlplane.cluster.ports import VersionWaiters
from controlplane.intake.bus import PolicyEvent
from controlplane.intake.files import DurableIntake
from controlplane.intake.store import Change, PolicyStore
from controlplane.metrics import Metrics
from controlplane.push.engine import PushEngine
from controlplane.push.live import LiveSession
from controlplane.rollouts.halts import Halts
from controlplane.rollouts.waves import Waves
from policies.errors import PolicyValidationError
from policies.model import Policy
from sessions.clock import Clock

__all__ = ["DELIVERED", "PolicyEvents", "PolicySets"]

log = logging.getLogger(__name__)


class PolicyEvents:
    def __init__(
        self,
        *,
        clock: Clock,
        metrics: Metrics,
        intake: DurableIntake,
        engine: PushEngine,
        sets: PolicySets,
        halts: Halts,
        waves: Waves,
        waiters: VersionWaiters,
    ) -> None:
        self._clock = clock
        self._metrics = metrics
        self._intake = intake
        self._store: PolicyStore = intake.store
        self._engine = engine
        self._sets = sets
        self._halts = halts
        self._waves = waves
        self._waiters = waiters  # publishes waiting for this replica to apply

    async def on_event(self, event: PolicyEvent) -> None:
        """The bus's handler. Each event is counted here exactly once, with the result of all
        of its handling (``controlplane_policy_events_total``): ``applied`` / ``ignored`` /
        ``invalid``, or ``error`` when any step raised, even one after the store took it (the
        sessions may not have been reconciled; the exception goes on to the bus, which counts
        only what it refuses before a handler: controlplane.cluster.nats_bus)."""
        result = "error"
        try:
            result = await self._dispatch(event)
        finally:
            self._metrics.policy_events.labels(event.type, result).inc()
            self._waves.refresh(event.policy_id)
            self._waves.poke()

    async def _dispatch(self, event: PolicyEvent) -> str:
        received = self._clock.monotonic()
        if event.type == "policy.halted":
            return await self._halted(event, received)
        if event.type == "policy.wave":
            return await self._wave(event, received)
        try:
            change = await self._intake.apply(event)
        except PolicyValidationError as exc:
            log.warning("policy event %s refused: %s", event.msg_id, exc)
            return "invalid"
        if change is None:
            log.info("policy event %s ignored (duplicate, older version or role below the "
                     "owner's)", event.msg_id)  # fmt: skip
            # its publisher stops waiting and finds out why (service.publish)
            current = self._store.current_version(event.policy_id)
            self._waiters.reached(event.policy_id, max(current, event.version))
            return "ignored"
        _log_change(event)
        try:
            # a session's record says ``policy`` for an admin's transfer (a new version of the
            # same document: docs/security.md#transfers); its version log knows no such cause
            cause = "policy" if event.cause == "transfer" else event.cause
            await self._reconcile_change(change, cause, received)
        finally:
            self._waiters.reached(event.policy_id, self._store.current_version(event.policy_id))
        return "applied"

    async def _halted(self, event: PolicyEvent, received: float) -> str:
        await self._intake.before_halt(event)
        if self._store.halt(event) is None:
            log.info("policy event %s ignored (not the current version, or already halted)",
                     event.msg_id)  # fmt: skip
            return "ignored"
        self._halts.applied(event)
        # the sessions running the halted version keep it; the others resolve its fallback
        self._sets.pin(event.policy_id, event.version, self._engine.live.values())
        fallback = self._store.fallback(event.policy_id)
        halted = self._store.active_policy(event.policy_id)
        relevant = [p for p in (halted, fallback.policy if fallback else None) if p is not None]
        await self.reconcile(self._engine.live.values(), cause="policy", event_at=received,
                             relevant=relevant)  # fmt: skip
        return "applied"

    async def _wave(self, event: PolicyEvent, received: float) -> str:
        await self._intake.before_wave(event)
        state = self._store.wave(event)
        if state is None:
            log.info("policy event %s ignored (not the next wave step of the active version)",
                     event.msg_id)  # fmt: skip
            return "ignored"
        self._waves.applied(event, state)
        if (event.wave or {}).get("action") in ("advance", "promote"):
            relevant = [p for p in (state.policy, state.previous) if p is not None]
            await self.reconcile(self._engine.live.values(), cause="policy",
                                 event_at=received, relevant=relevant)  # fmt: skip
        return "applied"

    async def _reconcile_change(self, change: Change, cause: str, received: float) -> None:
        relevant = [p for p in (change.before, change.after, change.fallback) if p is not None]
        mode_policy = change.after or change.before
        next_turn = None
        if mode_policy is not None and mode_policy.apply == "next_turn":
            next_turn = (mode_policy.id, mode_policy.apply_deadline_s)
        await self.reconcile(self._engine.live.values(), cause=cause, event_at=received,
                             next_turn=next_turn, relevant=relevant)  # fmt: skip

    async def reconcile(
        self,
        sessions: Iterable[LiveSession],
        *,
        cause: str,
        event_at: float | None,
        next_turn: tuple[str, float] | None = None,
        relevant: Iterable[Policy] | None = None,
    ) -> None:
        """``engine.reconcile`` per policy set (one call when nothing is halted and no version
        is between waves)."""
        relevant = None if relevant is None else list(relevant)
        for policies, members in self._sets.groups(sessions):
            await self._engine.reconcile(members, policies, cause=cause, event_at=event_at,
                                         next_turn=next_turn, relevant=relevant)  # fmt: skip


# rollout statuses (LiveSession.policy_status) meaning the session runs that version
DELIVERED: Final = frozenset({"sent", "acked", "unverified", "skipped", "unchanged"})

Group = tuple[list[Policy], list[LiveSession]]


class PolicySets:
    def __init__(self, store: PolicyStore) -> None:
        self._store = store
        self._pinned: dict[tuple[str, int], set[str]] = {}  # halted version -> session ids

    def pin(self, policy_id: str, version: int, live: Iterable[LiveSession]) -> None:
        """A halt of ``(policy_id, version)`` was applied: the sessions running it keep it."""
        self._pinned[(policy_id, version)] = {
            ls.session.id for ls in live if _runs(ls, policy_id, version)
        }

    def pins(self, ls: LiveSession) -> frozenset[tuple[str, int]]:
        """The halted versions this session runs (and keeps)."""
        return frozenset(
            key
            for key, sessions in self._pinned.items()
            if ls.session.id in sessions and self._store.is_halted(*key)
        )

    def for_session(self, ls: LiveSession) -> list[Policy]:
        if not self._store.has_halts:
            self._pinned.clear()  # every halt ended (a newer version, or retired)
            return self._store.for_session(ls.session.bucket_key, ls.session.labels)
        return self._store.resolution_set(self.pins(ls), self._outside(ls))

    def groups(self, sessions: Iterable[LiveSession]) -> list[Group]:
        """The sessions by policy set: one group (the active set) when nothing is halted and
        no version is between waves, else one per distinct pins and waves outside (rarely
        more than a few)."""
        if not self._store.has_halts:
            self._pinned.clear()
            if not self._store.has_waves:
                return [(self._store.active(), list(sessions))]
        by_key: dict[tuple[frozenset[tuple[str, int]], frozenset[str]], list[LiveSession]] = {}
        for ls in sessions:
            by_key.setdefault((self.pins(ls), self._outside(ls)), []).append(ls)
        return [
            (self._store.resolution_set(pins, outside), members)
            for (pins, outside), members in by_key.items()
        ]

    def _outside(self, ls: LiveSession) -> frozenset[str]:
        """The policies whose current wave this session is not in (docs/policies.md#waves)."""
        return self._store.outside_waves(ls.session.id, ls.session.labels)


def _runs(ls: LiveSession, policy_id: str, version: int) -> bool:
    status = ls.policy_status.get(policy_id)
    return status is not None and status[0] == version and status[2] in DELIVERED


def _log_change(event: PolicyEvent) -> None:
    """One line per policy change this replica applies: what an operator greps the service's
    log for (who changed which policy when; the guard acts as ``guard:<node>``), the reason
    quoted as the document gave it."""
    done = "retired" if event.type == "policy.retired" else "published"
    done = "rolled back" if event.cause == "rollback" else done
    reason = event.policy.get("reason")
    log.info("policy %s version %d %s by %s%s", event.policy_id, event.version, done,
             event.actor, f", reason {reason!r}" if isinstance(reason, str) else "")  # fmt: skip
