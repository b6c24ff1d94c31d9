"""The control plane service: policy intake, event handling, live sessions, queries.

Implements ``controlplane.api.ports.ControlPlaneAPI``; the gateway and the control channel
open and close sessions through it. Built only by ``controlplane.app``.

Distributed mode adds optional ``ClusterPorts`` (controlplane.cluster.ports): policy versions are
checked against the policy stream, per-session actions for sessions another replica holds
are routed to it, their logs come from it (or from the durable audit stream once it is
gone), and rollout status adds the counts the other replicas publish.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from controlplane.audit.sources import (
    Trail,
    checkpoint_evidence,
    config_at_answer,
    parse_public_keys,
    read_trail,
    require_checkpoints,
    verify_answer,
)
from controlplane.cluster.ports import ClusterPorts, VersionWaiters
from controlplane.config import Settings
from controlplane.errors import BadRequest, Conflict, NotFound, Unavailable, ValidationFailed
from controlplane.intake.authority import acting_role, check_locks, check_owner
from controlplane.intake.bus import PolicyBus, PolicyEvent, rfc3339
from controlplane.intake.files import DurableIntake, PolicyFiles
from controlplane.intake.store import Change, PolicyStore
from controlplane.metrics import Metrics
from controlplane.push.engine import LiveSession, PushEngine, Transport
from controlplane.push.protocol import PushState
from controlplane.roles import Role
from controlplane.rollouts.assignments import AssignmentBook
from controlplane.rollouts.counts import local_counts, rollout_body
from controlplane.rollouts.experiments import ExperimentBook, merge_exposures
from controlplane.rollouts.halts import Halts
from controlplane.rollouts.preview import preview
from controlplane.rollouts.waves import Waves, wave_status
from policies.delta import apply as apply_delta
from policies.delta import diff
from policies.errors import PolicyValidationError
from policies.fields import Config
from policies.model import Policy, parse_policy
from policies.resolve import Effective
from sessions.clock import Clock
from sessions.dialects.base import Dialect
from sessions.errors import SessionError, SessionIdTaken, UnknownSession, VersionLogError
from sessions.exposures import FileExposureStore
from sessions.model import Session, SessionState
from sessions.registry import Registry
from sessions.versionlog.core import LogEntry, VersionLog

__all__ = ["ControlPlane"]

log = logging.getLogger(__name__)


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
    ) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.clock = clock
        self.metrics = metrics
        self.registry = registry
        self.versionlog = versionlog
        self.bus = bus
        self.store = PolicyStore()
        # embedded mode: accepted policy events persist before they act (policy_files)
        self.intake = DurableIntake(self.store, policy_files)
        self.engine = PushEngine(
            settings=settings, clock=clock, versionlog=versionlog, registry=registry,
            metrics=metrics,
        )  # fmt: skip
        self.assignments = AssignmentBook()
        self.experiments = ExperimentBook(
            (cluster.exposures if cluster is not None else None) or FileExposureStore(None),
            clock=clock, metrics=metrics,
            policy=self.store.active_policy, min_exposures=settings.srm_min_exposures,
            live=self.engine.live, tail=versionlog.tail,
        )  # fmt: skip
        self.engine.on_record = self.experiments.observe
        self._started = False
        self.draining = False
        self.cluster = cluster or ClusterPorts()
        self._waiters = VersionWaiters()  # publishes waiting for this replica to apply
        # guarded rollouts: failure counting, halts, per-session policy sets (halts.py)
        self.halts = Halts(settings, clock=clock, metrics=metrics, store=self.store,
                           engine=self.engine, bus=bus, cluster=self.cluster,
                           rollback=self._guard_rollback)  # fmt: skip
        # progressive waves: policy.wave steps, their task, promote/pause/resume (waves.py)
        self.waves = Waves(clock=clock, metrics=metrics, store=self.store, bus=bus,
                           halts=self.halts, node_id=settings.node_id,
                           apply_wait_s=settings.publish_apply_wait_s)  # fmt: skip
        bus.subscribe(self._on_event)
        if self.cluster.router is not None:
            self.cluster.router.handle("relabel", self._rpc_relabel)
            self.cluster.router.handle("log", self._rpc_log)

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
        await self.registry.close()

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

    # -- policy intake -------------------------------------------------------------------
    # ``role`` is the caller's (the REST token's); internal callers act as admin. Ownership
    # and lock checks: docs/policies.md#ownership, #locks.
    async def publish_policy(
        self, doc: Mapping[str, Any], *, actor: str, role: Role = Role.ADMIN
    ) -> dict[str, Any]:
        self._require_accepting()
        parsed = parse_policy(doc)
        check_owner(self.store, parsed.id, role, "publish")
        same = self.store.unchanged(parsed)
        if same is not None:  # identical to the current version: no new version
            return {"id": same.policy.id, "version": same.version, "unchanged": True,
                    "digest": same.policy.digest, "warnings": []}  # fmt: skip
        self._require_reason(parsed, parsed.reason, "publish")
        policy = self.store.prepare(parsed)
        assert policy.version is not None
        stored = await self._stored_version(policy.id)
        if stored >= policy.version:  # this replica has not applied the latest version yet
            if parsed.version is not None:
                raise Conflict(
                    f"policy {policy.id!r} version {policy.version} is not above the current "
                    f"version {stored}; publish version {stored + 1} or omit version",
                    details={"id": policy.id, "version": policy.version, "current": stored},
                )
            policy = policy.with_version(stored + 1)
        warnings = check_locks(self.store, policy, role)
        result = await self._publish(policy, "policy.published", actor, "policy", role)
        result["warnings"] = warnings
        return result

    async def retire_policy(
        self,
        policy_id: str,
        *,
        actor: str,
        role: Role | None = Role.ADMIN,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """``role`` None: the rollout guard, acting for the policy's owner."""
        self._require_accepting()
        latest = self.store.latest(policy_id)
        role = acting_role(self.store, policy_id, role, "retire", latest.policy)
        if latest.retired:
            raise Conflict(f"policy {policy_id!r} is already retired", code="already_retired")
        self._require_reason(latest.policy, reason, "retire")
        version = max(latest.version, await self._stored_version(policy_id)) + 1
        policy = latest.policy.with_version(version).with_reason(reason)
        return await self._publish(policy, "policy.retired", actor, "retire", role)

    async def rollback_policy(
        self,
        policy_id: str,
        to_version: int,
        *,
        actor: str,
        role: Role | None = Role.ADMIN,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """``role`` None: the rollout guard, acting for the policy's owner (no lock check)."""
        self._require_accepting()
        target = self.store.version(policy_id, to_version)
        guard = role is None
        role = acting_role(self.store, policy_id, role, "roll back", target.policy)
        if target.retired:
            raise BadRequest(
                f"version {to_version} of {policy_id!r} is a retirement; roll back to a "
                "published version",
                code="not_a_published_version",
            )
        self._require_reason(self.store.latest(policy_id).policy, reason, "rollback")
        self._require_reason(target.policy, reason, "rollback")
        current = max(self.store.current_version(policy_id), await self._stored_version(policy_id))
        policy = target.policy.with_version(current + 1).with_reason(reason)
        warnings = [] if guard else check_locks(self.store, policy, role)
        result = await self._publish(policy, "policy.published", actor, "rollback", role)
        result["rolled_back_to"] = to_version
        result["warnings"] = warnings
        return result

    async def _publish(
        self, policy: Policy, kind: str, actor: str, cause: str, role: Role
    ) -> dict[str, Any]:
        event = PolicyEvent(
            kind,  # type: ignore[arg-type]
            policy.document(),
            actor,
            rfc3339(self.clock.now()),
            cause=cause,
            role=role.label,
        )
        await self.bus.publish(event)
        assert policy.version is not None
        await self._applied_here(policy.id, policy.version, role)
        with contextlib.suppress(NotFound):  # not applied here yet: nothing to compare
            if self.store.version(policy.id, policy.version).event.event_id != event.event_id:
                raise Conflict(
                    f"policy {policy.id!r} version {policy.version} was taken by a concurrent "
                    "publish; publish again",
                    details={"id": policy.id, "version": policy.version},
                )
        if self.store.current_version(policy.id) < policy.version:
            # a higher role took the id over while this publish was in flight: every
            # replica's store refuses the event (docs/policies.md#ownership)
            check_owner(self.store, policy.id, role, "publish")
        return {"id": policy.id, "version": policy.version, "event_id": event.event_id,
                "type": kind, "unchanged": False, "digest": policy.digest}  # fmt: skip

    def _require_reason(self, policy: Policy, reason: str | None, action: str) -> None:
        """With ``require_reason_for_locks``, a change to a policy with ``lock`` needs one."""
        if self.settings.require_reason_for_locks and policy.lock and not reason:
            where = "a top-level 'reason'" if action == "publish" else "a reason"
            raise ValidationFailed(
                f"policy {policy.id!r} locks {', '.join(policy.lock)}: {action} needs {where} "
                "(this deployment requires one for policies with lock)",
                code="reason_required",
                details={"id": policy.id, "action": action, "lock": list(policy.lock)},
            )

    async def _stored_version(self, policy_id: str) -> int:
        """The last version any replica stored (0 without a shared policy stream)."""
        if self.cluster.versions is None:
            return 0
        return await self.cluster.versions.last_version(policy_id) or 0

    async def _applied_here(self, policy_id: str, version: int, role: Role) -> None:
        """Read-your-writes: wait (bounded) until this replica applied what it published (not
        for an event the store refuses for its role: a takeover raced the owner check)."""
        owner = self.store.owner_role(policy_id)
        if owner is not None and role < owner:
            return
        if self.store.current_version(policy_id) < version:
            wait_s = self.settings.publish_apply_wait_s
            if not await self._waiters.wait(policy_id, version, wait_s):
                log.info("policy %s v%d stored but not applied here within %.1fs",
                         policy_id, version, wait_s)  # fmt: skip

    async def _on_event(self, event: PolicyEvent) -> None:
        """The bus's handler. Each event is counted here exactly once, with the result of all
        of its handling (``controlplane_policy_events_total``): ``applied`` / ``ignored`` /
        ``invalid``, or ``error`` when any step raised, even one after the store took it (the
        sessions may not have been reconciled; the exception goes on to the bus, which counts
        only what it refuses before a handler: controlplane.cluster.nats_bus)."""
        result = "error"
        try:
            result = await self._dispatch(event)
        finally:
            self.metrics.policy_events.labels(event.type, result).inc()
            self.waves.refresh(event.policy_id)
            self.waves.poke()

    async def _dispatch(self, event: PolicyEvent) -> str:
        received = self.clock.monotonic()
        if event.type == "policy.halted":
            await self.intake.before_halt(event)
            return await self.halts.apply(event, received)
        if event.type == "policy.wave":
            await self.intake.before_wave(event)
            return await self.waves.apply(event, self._reconcile_wave, received)
        try:
            change = await self.intake.apply(event)
        except PolicyValidationError as exc:
            log.warning("policy event %s refused: %s", event.msg_id, exc)
            return "invalid"
        if change is None:
            log.info("policy event %s ignored (duplicate, older version or role below the "
                     "owner's)", event.msg_id)  # fmt: skip
            # its publisher stops waiting and finds out why (_publish)
            current = self.store.current_version(event.policy_id)
            self._waiters.reached(event.policy_id, max(current, event.version))
            return "ignored"
        try:
            await self._reconcile_change(change, event.cause, received)
        finally:
            self._waiters.reached(event.policy_id, self.store.current_version(event.policy_id))
        return "applied"

    async def _reconcile_change(self, change: Change, cause: str, received: float) -> None:
        relevant = [p for p in (change.before, change.after, change.fallback) if p is not None]
        mode_policy = change.after or change.before
        next_turn = None
        if mode_policy is not None and mode_policy.apply == "next_turn":
            next_turn = (mode_policy.id, mode_policy.apply_deadline_s)
        await self.halts.reconcile(
            self.engine.live.values(), cause=cause, event_at=received,
            next_turn=next_turn, relevant=relevant,
        )  # fmt: skip

    async def _reconcile_wave(self, relevant: list[Policy], received: float) -> None:
        await self.halts.reconcile(self.engine.live.values(), cause="policy",
                                   event_at=received, relevant=relevant)  # fmt: skip

    async def wave_action(
        self, policy_id: str, action: str, *, actor: str, role: Role = Role.ADMIN
    ) -> dict[str, Any]:
        """``promote`` / ``pause`` / ``resume`` the current version's waves (docs/policies.md
        #waves); experimenters only on experiment policies they own, like a rollback."""
        self._require_accepting()
        latest = self.store.latest(policy_id)
        acting_role(self.store, policy_id, role, action, latest.policy)
        await self.waves.by_hand(policy_id, action, actor=actor, role=role)
        return {"id": policy_id, "version": latest.version,
                "waves": wave_status(self.store, policy_id)}  # fmt: skip

    def _require_accepting(self) -> None:
        if self.draining:
            raise Unavailable("the control plane is shutting down", code="draining")

    # -- policy queries ------------------------------------------------------------------
    def list_policies(self, *, include_retired: bool = False) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.store.records() if include_retired or not r.retired]

    def get_policy(self, policy_id: str) -> dict[str, Any]:
        return self.store.latest(policy_id).as_dict()

    def policy_versions(
        self, policy_id: str, *, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Change records, oldest first, ``limit`` at a time; the cursor is the last version
        of the previous page."""
        if cursor is not None and not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 16):
            raise BadRequest("query parameter 'cursor' is not a cursor returned by this endpoint")
        after = 0 if cursor is None else int(cursor)
        records = [r for r in self.store.changes(policy_id) if r["version"] > after]
        page = records[:limit]
        return page, str(page[-1]["version"]) if len(records) > limit else None

    async def preview_policy(
        self, doc: Mapping[str, Any], *, role: Role = Role.ADMIN
    ) -> dict[str, Any]:
        """What publishing ``doc`` as ``role`` would do: the same ownership (403) and lock
        (409) checks, then the live sessions it would change, locks winning."""
        policy = parse_policy(doc)
        check_owner(self.store, policy.id, role, "publish")
        policy = policy.with_version(self.store.current_version(policy.id) + 1)
        warnings = check_locks(self.store, policy, role)
        policy = policy.with_rank(int(max(role, self.store.owner_role(policy.id) or role)))
        policies = [p for p in self.store.active() if p.id != policy.id] + [policy]
        answer = preview(policy, policies, self.engine.live.values(), self.engine.resolve)
        answer["warnings"] = warnings
        return answer

    async def rollout_status(self, policy_id: str) -> dict[str, Any]:
        latest = self.store.latest(policy_id)
        parts = self.halts.local_rows(policy_id)
        if self.cluster.peers is not None:
            with _backend("rollout counts of the other replicas"):
                parts += await self.cluster.peers.rollout_rows(policy_id)
        body = rollout_body(policy_id, latest.version, latest.retired, parts)
        body.update(self.halts.status(policy_id))  # state, halt, guard (issue #8)
        body["waves"] = wave_status(self.store, policy_id)  # progressive waves (issue #21)
        return body

    def rollout_counts(self) -> dict[str, list[dict[str, Any]]]:
        """This replica's rollout rows per policy (what it publishes for the others)."""
        return self.halts.with_failures(local_counts(self.engine.live.values()))

    def policies_for(self, ls: LiveSession) -> list[Policy]:
        """The policy set this session resolves with (``store.active()`` unless a version it
        runs, or would get, is halted: controlplane.rollouts.halts)."""
        return self.halts.policies_for(ls)

    async def _guard_rollback(self, policy_id: str, to_version: int | None) -> None:
        actor = f"guard:{self.node_id}"
        reason = "rollout guard: failures over the limit"
        if to_version is None:  # no earlier good version: the policy stops applying
            await self.retire_policy(policy_id, actor=actor, role=None, reason=reason)
        else:
            await self.rollback_policy(policy_id, to_version, actor=actor, role=None,
                                       reason=reason)  # fmt: skip

    def _experiment_policy(self, key: str) -> Policy:
        """The active policy running experiment ``key``, else the last one that did."""
        found: Policy | None = None
        for record in self.store.records():
            exp = record.policy.experiment
            if exp is not None and exp.key == key:
                active = self.store.active_policy(record.policy.id)
                active_exp = None if active is None else active.experiment
                if active is not None and active_exp is not None and active_exp.key == key:
                    return active
                found = found or record.policy
        if found is None:
            raise NotFound(f"no experiment {key!r}", code="experiment_not_found")
        return found

    async def experiment_summary(self, key: str) -> dict[str, Any]:
        return await self.experiments.summary(self._experiment_policy(key))

    async def experiment_assignments(self, key: str) -> list[dict[str, Any]]:
        """Every assignment of experiment ``key`` over its whole history: live and ended
        sessions, and sessions that left it (exposure rows), in (session id, iteration) order."""
        policy = self._experiment_policy(key)
        policies = {p.id: p for p in self.store.active()}
        rows = self.assignments.rows(key, self.engine.live.values(), policies)
        return merge_exposures(rows, await self.experiments.exposures(key), policy)

    # -- sessions: queries ---------------------------------------------------------------
    async def list_sessions(
        self,
        *,
        selector: Mapping[str, list[str]] | None = None,
        kind: str | None = None,
        state: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        upstream_id: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        def keep(s: Session) -> bool:
            if kind is not None and s.kind != kind:
                return False
            if state is not None and s.state.value != state:
                return False
            if selector:
                for label, values in selector.items():
                    if s.labels.get(label) not in values:
                        return False
            return True

        if upstream_id is not None:  # at most one session: found by its index, not a scan
            found = await self._find(await self.resolve_session_id(upstream_id))
            match = found is not None and found.upstream_id == upstream_id and keep(found)
            return ([found.to_dict()] if match and found is not None else []), None
        with _backend("listing sessions"):
            page = await self.registry.list(
                keep, include_ended=state == "ended", limit=limit, cursor=cursor
            )
        items = []
        for s in page.items:
            live = self.engine.live.get(s.id)
            items.append((live.session if live else s).to_dict())
        return items, page.next

    async def get_session(self, session_id: str) -> dict[str, Any]:
        session = await self._find(await self.resolve_session_id(session_id))
        if session is None:
            raise NotFound(f"no session {session_id!r}", code="session_not_found")
        return session.to_dict()

    async def _find(self, session_id: str) -> Session | None:
        live = self.engine.live.get(session_id)
        return live.session if live is not None else await self._recorded(session_id)

    async def resolve_session_id(self, ref: str) -> str:
        """A control plane session id, or the upstream's id of a session (``Begin.id``, the
        Voice Agent's ``session_id``) -> the control plane id. Unknown: ``ref`` unchanged
        (the caller answers 404)."""
        if ref in self.engine.live:
            return ref
        if await self._recorded(ref) is not None:
            return ref
        for ls in self.engine.live.values():  # a REST lookup, not a hot path
            if ls.session.upstream_id == ref:
                return ls.session.id
        with _backend("reading the session registry"):
            found = await self.registry.find_upstream(ref)
        return ref if found is None else found

    async def _recorded(self, session_id: str) -> Session | None:
        """The registry's record (None: unknown); registry failures answer 503."""
        with _backend("reading the session registry"):
            try:
                return await self.registry.get(session_id)
            except UnknownSession:
                return None

    async def _owner_elsewhere(self, session_id: str) -> str | None:
        """The replica holding this session's socket, if another one and routing is on."""
        if self.cluster.router is None or session_id in self.engine.live:
            return None
        with _backend("reading the session owner"):
            owner = await self.registry.owner(session_id)
        return owner if owner is not None and owner != self.node_id else None

    async def session_log(
        self, session_id: str, *, local_only: bool = False
    ) -> list[dict[str, Any]]:
        session_id = await self.resolve_session_id(session_id)
        if not local_only and session_id not in self.engine.live:
            remote = await self._remote_log(session_id)
            if remote is not None:
                return remote
        await self.versionlog.flush()
        entries = await self.versionlog.entries(session_id)
        if not entries and session_id not in self.engine.live:
            await self.get_session(session_id)  # 404 when unknown
        return [e.to_dict() for e in entries]

    async def _remote_log(self, session_id: str) -> list[dict[str, Any]] | None:
        """A log kept by another replica: from its owner while live, else from the durable
        audit stream. None when the local log is the one to read."""
        session = await self._recorded(session_id) if self.cluster.audit else None
        if session is not None and session.node == self.node_id:
            return None
        owner = await self._owner_elsewhere(session_id)
        if owner is not None and self.cluster.router is not None:
            with contextlib.suppress(Unavailable):  # gone: its shipped entries remain
                return list(await self.cluster.router.call(owner, "log",
                                                           {"session_id": session_id}))  # fmt: skip
        if self.cluster.audit is None:
            return None
        with _backend("reading the durable audit stream"):
            rows = await self.cluster.audit.session_rows(session_id)
        if not rows:
            return [] if session is not None else None
        out = []
        for row in rows:
            try:
                out.append(LogEntry.from_dict(row).to_dict())
            except VersionLogError:
                log.warning("session %s: a stored audit entry is malformed", session_id)
        return out

    async def verify_audit(
        self, session_id: str | None = None, *, public_keys: Sequence[str] = ()
    ) -> dict[str, Any]:
        trusted = parse_public_keys(public_keys)  # a bad key is 400 before any reading
        if session_id is not None:
            session_id = await self.resolve_session_id(session_id)
        trail = await self._audit_trail(session_id)
        answer = verify_answer(trail, session_id, trusted)
        if trail.source == "local":  # this replica signs checkpoints: none may go missing
            evidence = checkpoint_evidence(self.settings.data_dir)
            answer = require_checkpoints(answer, trail, evidence, now=self.clock.now())
        broken = sum(1 for r in answer["items"] if not r["ok"])
        broken += 0 if answer["checkpoints"]["ok"] else 1
        if broken:
            self.metrics.audit_verify_failures.inc(broken)
        return answer

    async def config_at(
        self, session_id: str, at: float, *, public_keys: Sequence[str] = ()
    ) -> dict[str, Any]:
        trusted = parse_public_keys(public_keys)
        session_id = await self.resolve_session_id(session_id)
        return config_at_answer(await self._audit_trail(session_id), session_id, at, trusted)

    async def _audit_trail(self, session_id: str | None) -> Trail:
        """Another replica's session from the durable audit stream, else the local log."""
        remote = False
        if session_id is not None and self.cluster.audit is not None:
            session = await self._recorded(session_id)
            remote = session_id not in self.engine.live and (
                session is None or session.node != self.node_id
            )
        with _backend("reading the audit trail"):
            return await read_trail(self.versionlog, self.cluster.audit, session_id,
                                    remote=remote)  # fmt: skip

    async def relabel_session(
        self,
        session_id: str,
        labels: Mapping[str, str | None],
        *,
        actor: str,
        local_only: bool = False,
    ) -> dict[str, Any]:
        session_id = await self.resolve_session_id(session_id)
        ls = self.engine.live.get(session_id)
        if ls is None:
            owner = None if local_only else await self._owner_elsewhere(session_id)
            if owner is not None and self.cluster.router is not None:
                payload = {"session_id": session_id, "labels": dict(labels), "actor": actor}
                return dict(await self.cluster.router.call(owner, "relabel", payload))
            await self.get_session(session_id)
            raise Conflict(
                f"session {session_id!r} is not live on this node", code="session_not_live"
            )
        # replaced, not changed in place (LiveSession.inputs)
        ls.session.labels = apply_delta(ls.session.labels, labels)
        await self.engine.reconcile([ls], self.policies_for(ls), cause="relabel",
                                    event_at=self.clock.monotonic())  # fmt: skip
        return ls.session.to_dict()

    async def _rpc_relabel(self, payload: dict[str, Any]) -> dict[str, Any]:
        labels = payload["labels"]
        if not isinstance(labels, dict):
            raise BadRequest("labels must be an object")
        return await self.relabel_session(str(payload["session_id"]), labels,
                                          actor=str(payload.get("actor", "")),
                                          local_only=True)  # fmt: skip

    async def _rpc_log(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        return await self.session_log(str(payload["session_id"]), local_only=True)

    # -- sessions: lifecycle (gateway and control channel) -------------------------------
    def new_session(
        self, *, kind: str, model: str, labels: Mapping[str, str], client_config: Config,
        session_id: str | None = None,
    ) -> tuple[Session, Effective]:  # fmt: skip
        now = self.clock.now()
        session = Session(
            id=session_id or "cps_" + uuid.uuid4().hex,
            kind=kind, model=model, labels=dict(labels), node=self.node_id,
            client_config=dict(client_config), effective_config={}, provenance={}, applied=(),
            desired_version=0, sent_version=0, acked_version=0, state=SessionState.PENDING,
            created_at=now, updated_at=now, ended_at=None, end_cause=None, upstream_id=None,
        )  # fmt: skip
        return session, self.engine.resolve(session, self.store.for_session(session.id, labels))

    async def attach(
        self,
        session: Session,
        effective: Effective,
        *,
        transport: Transport,
        dialect: Dialect,
        running: Config,
        connect_wire: dict[str, Any] | None,
        chosen_id: bool = False,
    ) -> LiveSession:
        """Hold a new live session. ``running`` is the config its upstream starts on: the
        effective config for a gateway late joiner (merged into the connect), the app's own
        config on the control channel (which then gets a ``connect`` push). ``chosen_id``: the
        client chose the id (not generated), so it may name an earlier session's trail."""
        self._refuse_live(session.id)
        if chosen_id:
            await self._refuse_foreign_trail(session.id)
            self._refuse_live(session.id)  # registered here while we waited
        starts_effective = running == effective.config
        push = PushState.start(
            acknowledging=transport.acknowledging, config=running,
            refs=effective.applied if starts_effective else (), version=1,
        )  # fmt: skip
        ls = LiveSession(session=session, push=push, transport=transport, dialect=dialect)
        self.engine.attach(ls, effective)
        self.engine.registering.add(session.id)
        try:
            with _backend("registering the session"):
                await self.registry.register(session)  # the cluster-wide claim of the id
        except SessionIdTaken as exc:
            self.engine.detach(session.id)
            raise Conflict(str(exc), code="session_exists",
                           details={"session_id": session.id}) from exc  # fmt: skip
        except BaseException:
            self.engine.detach(session.id)
            raise
        finally:
            self.engine.registering.discard(session.id)
        try:
            delta = diff(session.client_config, running)
            # exposes: the session runs its policies' values from the start (a Voice Agent
            # gateway session only once its upstream acknowledges the connect)
            runs = not transport.acknowledging or getattr(transport, "runs_at_connect", False)
            self.engine.record(ls, cause="connect", status="sent", delta=delta,
                               wire=connect_wire, version=1, config=running,
                               exposes=starts_effective and runs)  # fmt: skip
            if not starts_effective:
                ls.push.want(effective.config, effective.applied, "connect",
                             event_at=self.clock.monotonic())  # fmt: skip
                self.engine._sync_session(ls)
        except BaseException:
            # nothing of a session that could not be recorded stays live or registered
            self.engine.detach(session.id)
            with contextlib.suppress(Exception):
                await self.registry.end(session.id, cause="attach_failed", at=self.clock.now())
            raise
        return ls

    def _refuse_live(self, session_id: str) -> None:
        if session_id in self.engine.live:
            raise Conflict(f"session {session_id!r} is already registered",
                           code="session_exists", details={"session_id": session_id})  # fmt: skip

    async def _refuse_foreign_trail(self, session_id: str) -> None:
        """An id nobody holds in the registry whose durable trail has entries (the registry
        lost the claim, or it expired) is refused: a second chain would break the trail."""
        if self.cluster.audit is None:
            return
        with _backend("checking the session id"):
            [holder] = await self.registry.holders([session_id])
            if holder is not None:  # ours (an ended id of this node continues its chain), or
                return  # another node's: register() refuses it atomically
            taken = await self.cluster.audit.has_trail(session_id)
        if taken:
            raise Conflict(f"session id {session_id!r} already has a durable audit trail; "
                           "a session id is used once", code="session_exists",
                           details={"session_id": session_id})  # fmt: skip

    async def detach(self, ls: LiveSession, cause: str) -> None:
        unsynced = self.engine.unsynced(ls)
        if self.engine.detach(ls.session.id) is None:
            return
        self.assignments.ended(ls, {p.id: p for p in self.policies_for(ls)})
        self.experiments.ended(ls)
        now = self.clock.now()
        try:
            if unsynced:  # e.g. the upstream id of a short session: kept in its ended record
                with contextlib.suppress(UnknownSession):
                    await self.registry.update(ls.session)
        except Exception as exc:
            log.warning("registry update of ending session %s failed: %s", ls.session.id, exc)
        ls.session.state = SessionState.ENDED
        ls.session.ended_at = now
        ls.session.end_cause = cause
        try:
            await self.registry.end(ls.session.id, cause=cause, at=now)
        except Exception as exc:
            log.warning("registry end of session %s failed, will retry: %s", ls.session.id, exc)
            self.engine.end_later(ls.session.id, cause, now)


@contextlib.contextmanager
def _backend(what: str) -> Iterator[None]:
    """A shared backend (registry, audit stream) failing answers 503, retryable."""
    try:
        yield
    except SessionError as exc:
        if not exc.retryable:
            raise
        raise Unavailable(f"{what}: {exc}", code="backend_unavailable") from exc
