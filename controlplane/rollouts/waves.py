"""Progressive waves (issue #21, docs/policies.md#waves): the service's side.

A version whose ``rollout`` has ``waves`` (ascending percents ending at 100) reaches the
sessions of its first wave when published; the sessions outside the current wave resolve the
policy's previous version (``PolicyStore.outside_waves``). Every step is a ``policy.wave``
event on the policy bus, so every replica (and, in embedded mode, the policy files) applies
the same steps in the same order:

- **advance**: each replica's ``Waves`` task looks, every ``TICK_S`` at most, for versions
  whose current wave started ``wave_interval_s`` ago (the step's ``published_at``, a wall
  time every replica shares, against the injected clock's wall time when the replica learns
  the step; from then on the wait runs on its monotonic clock, so a wall clock stepping
  forward or back does not advance a wave early or stall it: ``_due``), not paused, not
  halted. It asks the rollout guard's ports for
  the version's cluster-wide totals: while the guard holds it publishes the next step
  (``seq`` = last + 1: replicas deciding together publish the same ``Nats-Msg-Id``, JetStream
  keeps one, the others get 409 and do nothing); when the guard is breached it asks for the
  halt instead (``Halts.halt``: halt or roll back, as ``guard.on_breach`` says). A halted
  version is *stalled* at its wave: the halt keeps the sessions that run it, no other session
  gets it, nothing advances.
- **promote / pause / resume** (``controlplane policy promote|pause|resume ID``, REST
  ``POST /v1/policies/{id}/promote|pause|resume``): the same events, published by hand.
  Promote advances one wave at once (paused or not); resume restarts the wave's interval.

Metrics: ``controlplane_rollout_wave_percent{policy}`` (the current wave of the active
version), ``controlplane_rollout_wave_stalled{policy}`` (1 while a version with waves is
halted) and ``controlplane_rollout_wave_steps_total{policy, action}`` (steps applied here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

from controlplane.errors import Conflict, ControlPlaneError
from controlplane.intake.bus import PolicyBus, PolicyEvent, rfc3339
from controlplane.intake.store import PolicyStore, WaveState
from controlplane.metrics import Metrics
from controlplane.roles import Role
from controlplane.rollouts.halts import Halts
from controlplane.tasks import raise_if_cancelled, stop_task
from sessions.clock import Clock

__all__ = ["TICK_S", "Waves", "wave_status"]

log = logging.getLogger(__name__)

TICK_S: Final = 0.1  # how often a replica looks for a wave that is due (and at most 1 s)
_MAX_SLEEP_S: Final = 1.0


def wave_status(store: PolicyStore, policy_id: str) -> dict[str, Any] | None:
    """The ``waves`` block of the rollout status (None: the current version has none)."""
    state = store.waves(policy_id)
    if state is None:
        return None
    halted = store.is_halted(policy_id, state.policy.version or 0)
    if halted:
        phase = "stalled"
    elif state.complete:
        phase = "complete"
    elif state.paused:
        phase = "paused"
    else:
        phase = "advancing"
    next_at = None
    if phase == "advancing":
        next_at = rfc3339(state.started_at + _interval(state))
    return {
        "version": state.policy.version,
        "waves": [_num(w) for w in state.waves],
        "wave_interval_s": _interval(state),
        "index": state.index,
        "percent": _num(state.percent),
        "state": phase,
        "paused": state.paused,
        "started_at": rfc3339(state.started_at),
        "next_at": next_at,
        "previous_version": None if state.previous is None else state.previous.version,
        "steps": list(state.steps),
    }


class Waves:
    def __init__(
        self,
        *,
        clock: Clock,
        metrics: Metrics,
        store: PolicyStore,
        bus: PolicyBus,
        halts: Halts,
        node_id: str,
        apply_wait_s: float = 5.0,
    ) -> None:
        self._clock = clock
        self._metrics = metrics
        self._store = store
        self._bus = bus
        self._halts = halts
        self._node_id = node_id
        self._apply_wait_s = apply_wait_s
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        # (policy, version, started_at, interval) -> monotonic time its next wave is due
        self._due_at: dict[tuple[str, int, float, float], float] = {}

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="rollout-waves")

    async def close(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)

    def poke(self) -> None:
        """A policy event arrived: look at once whether a wave is due."""
        self._wake.set()

    # -- deciding ------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._sleep_s()):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.check()
            except Exception as exc:  # a backend blip (bus, peers' counts): retried next tick
                raise_if_cancelled()
                log.warning("rollout waves: check failed, retrying: %s", exc)

    def _sleep_s(self) -> float:
        left = [self._due(s) for s in self._running()]
        if not left:
            return _MAX_SLEEP_S
        return min(_MAX_SLEEP_S, max(TICK_S, min(left)))

    def _due(self, state: WaveState) -> float:
        """Seconds until ``state``'s next wave is due. Its start is a wall time (the step
        event's, shared by every replica), turned into this replica's monotonic time once,
        when first asked: a wall clock that steps later (NTP, a VM resumed) neither promotes
        a wave before its interval has passed nor stalls one for the size of the step."""
        interval = _interval(state)
        key = (state.policy.id, state.policy.version or 0, state.started_at, interval)
        mono = self._clock.monotonic()
        due = self._due_at.get(key)
        if due is None:
            if len(self._due_at) > 1024:  # (steps long taken: forgotten)
                self._due_at.clear()
            due = self._due_at[key] = mono + (state.started_at + interval - self._clock.now())
        return due - mono

    def _running(self) -> list[WaveState]:
        return [
            s
            for s in self._store.wave_states()
            if not s.complete and not s.paused and not self._store.halted(s.policy.id)
        ]

    async def check(self) -> list[tuple[str, int, str]]:
        """Advance (or stall) every version whose wave is due; what it did, per version."""
        done = []
        for state in self._running():
            if self._due(state) > 0:
                continue
            policy_id, version = state.policy.id, state.policy.version or 0
            guarded = self._halts.guarded(policy_id)
            if guarded is not None and guarded[0] == version:
                spec = guarded[1]
                targeted, failed = await self._halts.totals(policy_id, version)
                if spec.breached(targeted, failed):
                    detail = {
                        "reason": "failure_ratio",
                        "failed": failed,
                        "targeted": targeted,
                        "ratio": round(failed / targeted, 6),
                        **{k: v for k, v in spec.document().items() if k != "enabled"},
                    }
                    await self._halts.halt(policy_id, version, detail)
                    done.append((policy_id, version, "stalled"))
                    continue
            if await self._step(state, "advance", f"waves:{self._node_id}", None):
                done.append((policy_id, version, "advance"))
        return done

    # -- by hand -------------------------------------------------------------------------
    async def by_hand(
        self, policy_id: str, action: str, *, actor: str, role: Role, team: str | None = None
    ) -> None:
        """Publish a promote / pause / resume step of the policy's current version; 409 when
        it cannot happen (no waves, halted, last wave reached, already paused / running)."""
        latest = self._store.latest(policy_id)
        state = self._store.waves(policy_id)
        if latest.retired or state is None or state.policy.version != latest.version:
            raise Conflict(
                f"policy {policy_id!r} version {latest.version} has no rollout.waves",
                code="no_waves", details={"id": policy_id, "version": latest.version},
            )  # fmt: skip
        if self._store.halted(policy_id) is not None:
            raise Conflict(
                f"policy {policy_id!r} version {latest.version} is halted (stalled at wave "
                f"{state.index + 1} of {len(state.waves)}): publish a fix or roll back",
                code="wave_stalled", details={"id": policy_id, "version": latest.version},
            )  # fmt: skip
        problem = {
            "promote": "is at its last wave" if state.complete else None,
            "pause": "is already paused" if state.paused else None,
            "resume": None if state.paused else "is not paused",
        }[action]
        if problem is not None:
            raise Conflict(
                f"policy {policy_id!r} version {latest.version} {problem}",
                code=f"cannot_{action}",
                details={"id": policy_id, "version": latest.version, "index": state.index},
            )
        seq = state.seq + 1
        if not await self._step(state, action, actor, role, team):
            raise Conflict(
                f"policy {policy_id!r} version {latest.version} changed meanwhile; retry",
                details={"id": policy_id, "version": latest.version},
            )
        # read-your-writes: the answer (and the next step by hand) sees this step applied
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._apply_wait_s
        while state.seq < seq and self._store.waves(policy_id) is state:
            if loop.time() >= deadline:
                log.info("policy %s: wave step %d stored but not applied here within %.1fs",
                         policy_id, seq, self._apply_wait_s)  # fmt: skip
                break
            await asyncio.sleep(0.01)

    async def _step(
        self, state: WaveState, action: str, actor: str, role: Role | None,
        team: str | None = None,
    ) -> bool:  # fmt: skip
        """``role`` None: an automatic step, for the owner (role and team)."""
        index = state.index + 1 if action in ("advance", "promote") else state.index
        step = {"seq": state.seq + 1, "action": action, "index": index, "paused": state.paused}
        owner = self._store.owner_role(state.policy.id)
        event = PolicyEvent(
            "policy.wave", state.policy.document(), actor, rfc3339(self._clock.now()),
            cause="wave", role=(role or owner or Role.ADMIN).label, wave=step,
            team=team if role is not None else self._store.owner_team(state.policy.id),
        )  # fmt: skip
        try:
            await self._bus.publish(event)
        except Conflict as exc:  # another replica took this step first, or a newer version
            log.info("policy %s v%s: wave step %s not published (%s)", state.policy.id,
                     state.policy.version, step["seq"], exc.message)  # fmt: skip
            return False
        except ControlPlaneError:
            if role is not None:
                raise
            return False
        return True

    # -- applied -------------------------------------------------------------------------
    def applied(self, event: PolicyEvent, state: WaveState) -> None:
        """The store took this ``policy.wave`` step (every replica, in stream order): counted,
        logged, gauges set. The service's event handler re-resolves the sessions an advance
        moves (the version's match and its previous version's)."""
        action = str((event.wave or {}).get("action"))
        self._metrics.rollout_wave_steps.labels(event.policy_id, action).inc()
        log.info("policy %s v%d: wave %s (%d of %d, %s%%) by %s", event.policy_id,
                 event.version, action, state.index + 1, len(state.waves),
                 _num(state.percent), event.actor)  # fmt: skip
        self.refresh(event.policy_id)

    def refresh(self, policy_id: str) -> None:
        """Set the wave gauges of one policy from the store."""
        state = self._store.waves(policy_id)
        if state is None:
            with contextlib.suppress(KeyError):
                self._metrics.rollout_wave_percent.remove(policy_id)
            with contextlib.suppress(KeyError):
                self._metrics.rollout_wave_stalled.remove(policy_id)
            return
        self._metrics.rollout_wave_percent.labels(policy_id).set(float(state.percent))
        stalled = self._store.is_halted(policy_id, state.policy.version or 0)
        self._metrics.rollout_wave_stalled.labels(policy_id).set(1 if stalled else 0)


def _interval(state: WaveState) -> float:
    assert state.policy.rollout is not None
    return state.policy.rollout.interval_s


def _num(value: Any) -> int | float:
    return int(value) if value == int(value) else float(value)
