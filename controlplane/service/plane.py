"""The control plane service: the parts, built and started in order, behind one API.

Implements ``controlplane.api.ports.ControlPlaneAPI``; the gateway and the control channel
open and close sessions through it. Built only by ``controlplane.app``. Its parts, one module
each under ``controlplane/service/``:

- ``events``: the bus's handler, one policy event from the store to the push engine;
- ``publishing``: publish, retire, roll back, wave steps (events onto the bus, never applied
  on the publisher's call stack);
- ``queries``: policies, rollout status, preview, experiments;
- ``records``: session lookups, logs, audit answers, relabels;
- ``live``: sessions opened and closed by the edges.

Halts and waves are data the event handler and the edges read
(``controlplane.service.events``); the rollout guard (``Halts``) and the wave task
(``Waves``) decide and publish like any other publisher.

Distributed mode adds optional ``ClusterPorts`` (controlplane.cluster.ports): policy versions are
checked against the policy stream, per-session actions for sessions another replica holds
are routed to it, their logs come from it (or from the durable audit stream once it is
gone), and rollout status adds the counts the other replicas publish.
"""

from __future__ import annotations

from typing import Any

from controlplane.cluster.ports import ClusterPorts, VersionWaiters
from controlplane.config import Settings
from controlplane.intake.bus import PolicyBus
from controlplane.intake.files import DurableIntake, PolicyFiles
from controlplane.intake.store import PolicyStore
from controlplane.metrics import Metrics
from controlplane.push.engine import PushEngine
from controlplane.push.live import LiveSession
from controlplane.push.observer import NO_OBSERVER, PushObserver
from controlplane.rollouts.assignments import AssignmentBook
from controlplane.rollouts.experiments import ExperimentBook
from controlplane.rollouts.halts import Halts
from controlplane.rollouts.waves import Waves
from controlplane.service.events import PolicyEvents, PolicySets
from controlplane.service.live import LiveSessions
from controlplane.service.publishing import Publisher
from controlplane.service.queries import PolicyQueries
from controlplane.service.records import SessionRecords
from policies.model import Policy
from sessions.clock import Clock
from sessions.exposures import FileExposureStore
from sessions.registry import Registry
from sessions.versionlog.core import VersionLog

__all__ = ["ControlPlane"]


class ControlPlane:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock,
        metrics: Metrics,
        registry: Registry,
        versionlog: VersionLog,
        bus: PolicyBus,
        cluster: ClusterPorts | None = None,
        policy_files: PolicyFiles | None = None,
        push_observer: PushObserver = NO_OBSERVER,
    ) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.clock = clock
        self.metrics = metrics
        self.registry = registry
        self.versionlog = versionlog
        self.bus = bus
        self.cluster = cluster or ClusterPorts()
        self._started = False
        self.draining = False
        self.store = PolicyStore()
        # embedded mode: accepted policy events persist before they act (policy_files)
        self.intake = DurableIntake(self.store, policy_files)
        self.engine = PushEngine(
            settings=settings, clock=clock, versionlog=versionlog, registry=registry,
            observer=push_observer,  # the engine's metrics (wired by controlplane.app)
        )  # fmt: skip
        self.sets = PolicySets(self.store)  # halts and waves, as data
        self.assignments = AssignmentBook()
        self.experiments = ExperimentBook(
            self.cluster.exposures or FileExposureStore(None),
            clock=clock, metrics=metrics,
            policy=self.store.active_policy, min_exposures=settings.srm_min_exposures,
            live=self.engine.live, tail=versionlog.tail, history=self.store.history,
        )  # fmt: skip
        self.engine.on_record = self.experiments.observe
        waiters = VersionWaiters()  # publishes waiting for this replica to apply

        async def guard_rollback(policy_id: str, to_version: int | None) -> None:
            await self.publisher.guard_rollback(policy_id, to_version)  # built below

        # guarded rollouts: failure counting, the guard's decisions (halts.py)
        self.halts = Halts(settings, clock=clock, metrics=metrics, store=self.store,
                           engine=self.engine, bus=bus, cluster=self.cluster,
                           rollback=guard_rollback)  # fmt: skip
        # progressive waves: policy.wave steps, their task, promote/pause/resume (waves.py)
        self.waves = Waves(clock=clock, metrics=metrics, store=self.store, bus=bus,
                           halts=self.halts, node_id=settings.node_id,
                           apply_wait_s=settings.publish_apply_wait_s)  # fmt: skip
        self.publisher = Publisher(
            settings, clock=clock, store=self.store, bus=bus, cluster=self.cluster,
            waiters=waiters, waves=self.waves, draining=lambda: self.draining,
        )  # fmt: skip
        self.events = PolicyEvents(
            clock=clock, metrics=metrics, intake=self.intake, engine=self.engine,
            sets=self.sets, halts=self.halts, waves=self.waves, waiters=waiters,
        )  # fmt: skip
        bus.subscribe(self.events.on_event)  # the same handler in both modes
        self.queries = PolicyQueries(
            store=self.store, engine=self.engine, halts=self.halts, cluster=self.cluster,
            experiments=self.experiments, assignments=self.assignments,
        )  # fmt: skip
        self.records = SessionRecords(
            settings, clock=clock, metrics=metrics, registry=registry, versionlog=versionlog,
            engine=self.engine, sets=self.sets, cluster=self.cluster,
        )  # fmt: skip
        self.live = LiveSessions(
            settings, clock=clock, registry=registry, store=self.store, engine=self.engine,
            sets=self.sets, cluster=self.cluster, assignments=self.assignments,
            experiments=self.experiments, versionlog=versionlog, metrics=metrics,
        )  # fmt: skip
        # the API (controlplane.api.ports.ControlPlaneAPI) and the edges, part by part
        self.publish_policy = self.publisher.publish_policy
        self.retire_policy = self.publisher.retire_policy
        self.rollback_policy = self.publisher.rollback_policy
        self.wave_action = self.publisher.wave_action
        self.transfer_policy = self.publisher.transfer_policy
        self.list_policies = self.queries.list_policies
        self.get_policy = self.queries.get_policy
        self.policy_versions = self.queries.policy_versions
        self.preview_policy = self.queries.preview_policy
        self.rollout_status = self.queries.rollout_status
        self.rollout_counts = self.queries.rollout_counts
        self.experiment_summary = self.queries.experiment_summary
        self.experiment_assignments = self.queries.experiment_assignments
        self.experiment_timeline = self.queries.experiment_timeline
        self.list_sessions = self.records.list_sessions
        self.get_session = self.records.get_session
        self.session_log = self.records.session_log
        self.verify_audit = self.records.verify_audit
        self.config_at = self.records.config_at
        self.relabel_session = self.records.relabel_session
        self.new_session = self.live.new_session
        self.call_of = self.records.call_of
        self.attach = self.live.attach
        self.detach = self.live.detach
        self.connect_durable = self.live.connect_durable
        self.not_connected = self.live.not_connected

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        await self.intake.replay()
        await self.versionlog.start()
        await self.engine.start()
        await self.experiments.start()
        await self.bus.start()
        await self.halts.start()
        await self.waves.start()
        self._started = True
        self.metrics.ready.set(1)

    async def close(self) -> None:
        self.metrics.ready.set(0)
        await self.waves.close()
        await self.halts.close()
        await self.bus.close()
        await self.engine.close()
        await self.experiments.close()
        await self.versionlog.close()
        # the registry is closed by the composition root, after the audit shipper's last pass
        # (its claim fence reads the registry: a closed client would reopen a connection)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, Any] = {"started": self._started, "draining": self.draining}
        ready = self._started and not self.draining
        failing: dict[str, str] = {}
        for name, gate in self.cluster.checks.items():
            ok = bool(gate())
            checks[name] = ok
            ready = ready and ok
            if not ok:
                failing[name] = "not ok"
        for name, probe in self.cluster.probes.items():  # gates that say why (health.py)
            reason = probe()
            checks[name] = reason is None
            if reason is not None:
                ready = False
                failing[name] = reason
        for name, fact in self.cluster.facts.items():
            checks[name] = fact()
        if failing:
            checks["failing"] = failing
        if self._started:
            self.metrics.ready.set(1 if ready else 0)
        return ready, checks

    def policies_for(self, ls: LiveSession) -> list[Policy]:
        """The policy set this session resolves with (``store.active()`` unless a version it
        runs, or would get, is halted, or it is outside a wave: service.events)."""
        return self.sets.for_session(ls)
