"""The control plane service: policy intake, event handling, live sessions, queries.

Implements ``controlplane.api.ports.ControlPlaneAPI``; the gateway and the control channel
open and close sessions through it. Built only by ``controlplane.app``.
"""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from controlplane.bus import PolicyBus, PolicyEvent, rfc3339
from controlplane.config import Settings
from controlplane.errors import BadRequest, Conflict, NotFound, Unavailable
from controlplane.metrics import Metrics
from controlplane.policy_store import Change, PolicyStore
from controlplane.push.engine import LiveSession, PushEngine, Transport
from controlplane.push.protocol import PushState
from policies.bucketing import bucket
from policies.delta import diff
from policies.errors import PolicyValidationError
from policies.fields import Config
from policies.model import Policy, parse_policy
from policies.resolve import Effective
from sessions.clock import Clock
from sessions.dialects.base import Dialect
from sessions.errors import UnknownSession
from sessions.model import Session, SessionState
from sessions.registry import Registry
from sessions.versionlog import VersionLog

__all__ = ["ControlPlane"]

log = logging.getLogger(__name__)

MAX_ENDED_ASSIGNMENTS = 100_000
PREVIEW_SAMPLES = 5


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
    ) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.clock = clock
        self.metrics = metrics
        self.registry = registry
        self.versionlog = versionlog
        self.bus = bus
        self.store = PolicyStore()
        self.engine = PushEngine(
            settings=settings, clock=clock, versionlog=versionlog, registry=registry,
            metrics=metrics,
        )  # fmt: skip
        # experiment key -> session id -> assignment, for sessions that have ended
        self._ended_assignments: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._started = False
        self.draining = False
        bus.subscribe(self._on_event)

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        await self.versionlog.start()
        await self.engine.start()
        await self.bus.start()
        self._started = True
        self.metrics.ready.set(1)

    async def close(self) -> None:
        self.metrics.ready.set(0)
        await self.bus.close()
        await self.engine.close()
        await self.versionlog.close()
        await self.registry.close()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        checks = {"started": self._started, "draining": self.draining}
        ready = self._started and not self.draining
        return ready, checks

    # -- policy intake -------------------------------------------------------------------
    async def publish_policy(self, doc: Mapping[str, Any], *, actor: str) -> dict[str, Any]:
        self._require_accepting()
        policy = self.store.prepare(parse_policy(doc))
        return await self._publish(policy, "policy.published", actor, "policy")

    async def retire_policy(self, policy_id: str, *, actor: str) -> dict[str, Any]:
        self._require_accepting()
        latest = self.store.latest(policy_id)
        if latest.retired:
            raise Conflict(f"policy {policy_id!r} is already retired", code="already_retired")
        policy = latest.policy.with_version(latest.version + 1)
        return await self._publish(policy, "policy.retired", actor, "retire")

    async def rollback_policy(
        self, policy_id: str, to_version: int, *, actor: str
    ) -> dict[str, Any]:
        self._require_accepting()
        target = self.store.version(policy_id, to_version)
        if target.retired:
            raise BadRequest(
                f"version {to_version} of {policy_id!r} is a retirement; roll back to a "
                "published version",
                code="not_a_published_version",
            )
        current = self.store.current_version(policy_id)
        policy = target.policy.with_version(current + 1)
        result = await self._publish(policy, "policy.published", actor, "rollback")
        result["rolled_back_to"] = to_version
        return result

    async def _publish(self, policy: Policy, kind: str, actor: str, cause: str) -> dict[str, Any]:
        event = PolicyEvent(
            kind,  # type: ignore[arg-type]
            policy.document(),
            actor,
            rfc3339(self.clock.now()),
            cause=cause,
        )
        await self.bus.publish(event)
        return {"id": policy.id, "version": policy.version, "event_id": event.event_id,
                "type": kind}  # fmt: skip

    async def _on_event(self, event: PolicyEvent) -> None:
        received = self.clock.monotonic()
        try:
            change = self.store.apply(event)
        except PolicyValidationError as exc:
            self.metrics.policy_events.labels(event.type, "invalid").inc()
            log.warning("policy event %s refused: %s", event.msg_id, exc)
            return
        if change is None:
            self.metrics.policy_events.labels(event.type, "ignored").inc()
            log.info("policy event %s ignored (duplicate or older version)", event.msg_id)
            return
        self.metrics.policy_events.labels(event.type, "applied").inc()
        await self._reconcile_change(change, event.cause, received)

    async def _reconcile_change(self, change: Change, cause: str, received: float) -> None:
        relevant = [p for p in (change.before, change.after) if p is not None]
        candidates = [
            ls
            for ls in self.engine.live.values()
            if any(p.match.matches(ls.target) for p in relevant)
        ]
        mode_policy = change.after or change.before
        next_turn = None
        if mode_policy is not None and mode_policy.apply == "next_turn":
            next_turn = (mode_policy.id, mode_policy.apply_deadline_s)
        await self.engine.reconcile(
            candidates, self.store.active(), cause=cause, event_at=received, next_turn=next_turn
        )

    def _require_accepting(self) -> None:
        if self.draining:
            raise Unavailable("the control plane is shutting down", code="draining")

    # -- policy queries ------------------------------------------------------------------
    def list_policies(self, *, include_retired: bool = False) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.store.records() if include_retired or not r.retired]

    def get_policy(self, policy_id: str) -> dict[str, Any]:
        return self.store.latest(policy_id).as_dict()

    def policy_versions(self, policy_id: str) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.store.history(policy_id)]

    async def preview_policy(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        policy = parse_policy(doc)
        policy = policy.with_version(self.store.current_version(policy.id) + 1)
        policies = [p for p in self.store.active() if p.id != policy.id] + [policy]
        by_kind: dict[str, dict[str, int]] = {}
        by_variant: dict[str, int] = {}
        samples: list[dict[str, Any]] = []
        targeted = changed = 0
        for ls in self.engine.live.values():
            if not policy.match.matches(ls.target):
                continue
            effective = self.engine.resolve(ls.session, policies)
            ref = next((r for r in effective.applied if r.id == policy.id), None)
            if ref is None:
                continue
            targeted += 1
            delta = diff(ls.session.effective_config, effective.config)
            counts = by_kind.setdefault(ls.session.kind, {"targeted": 0, "changed": 0})
            counts["targeted"] += 1
            if ref.variant is not None:
                by_variant[ref.variant] = by_variant.get(ref.variant, 0) + 1
            if delta:
                changed += 1
                counts["changed"] += 1
                if len(samples) < PREVIEW_SAMPLES:
                    encoded = ls.dialect.encode(delta, ls.session.model)
                    samples.append({
                        "session_id": ls.session.id, "kind": ls.session.kind,
                        "delta": _jsonable(delta), "wire": encoded.message,
                        "skipped": dict(encoded.skipped),
                    })  # fmt: skip
        return {"id": policy.id, "version": policy.version, "targeted": targeted,
                "changed": changed, "by_kind": by_kind, "by_variant": by_variant,
                "samples": samples}  # fmt: skip

    async def rollout_status(self, policy_id: str) -> dict[str, Any]:
        latest = self.store.latest(policy_id)
        rows: dict[tuple[int, str | None], dict[str, Any]] = {}
        for ls in self.engine.live.values():
            entry = ls.policy_status.get(policy_id)
            if entry is None:
                continue
            version, variant, status = entry
            row = rows.setdefault((version, variant), _rollout_row(version, variant))
            row["targeted"] += 1
            row[_ROLLOUT_COLUMN.get(status, "pending")] += 1
        totals = _rollout_row(latest.version, None)
        del totals["version"], totals["variant"]
        for row in rows.values():
            for key in totals:
                totals[key] += row[key]
        ordered = [rows[k] for k in sorted(rows, key=lambda k: (k[0], k[1] or ""))]
        return {"id": policy_id, "version": latest.version,
                "status": "retired" if latest.retired else "active",
                "versions": ordered, "totals": totals}  # fmt: skip

    async def experiment_assignments(self, key: str) -> list[dict[str, Any]]:
        policies = {p.id: p for p in self.store.active()}
        found = False
        for record in self.store.records():
            exp = record.policy.experiment
            if exp is not None and exp.key == key:
                found = True
        if not found:
            raise NotFound(f"no experiment {key!r}", code="experiment_not_found")
        out: dict[str, dict[str, Any]] = {}
        for (exp_key, session_id), row in self._ended_assignments.items():
            if exp_key == key:
                out[session_id] = row
        for ls in self.engine.live.values():
            for row in self._assignments_of(ls, policies):
                if row["experiment"] == key:
                    out[ls.session.id] = row
        return [out[k] for k in sorted(out)]

    def _assignments_of(
        self, ls: LiveSession, policies: Mapping[str, Policy]
    ) -> list[dict[str, Any]]:
        rows = []
        for ref in ls.session.applied:
            policy = policies.get(ref.id)
            if ref.variant is None or policy is None or policy.experiment is None:
                continue
            exp = policy.experiment
            value = (
                ls.session.id
                if exp.bucket_by == "session_id"
                else ls.session.labels.get(exp.bucket_by, "")
            )
            rows.append({
                "experiment": exp.key, "session_id": ls.session.id, "policy": ref.id,
                "version": ref.version, "variant": ref.variant, "bucket_by": exp.bucket_by,
                "bucket_value": value,
                "bucket": round(bucket(exp.key, exp.effective_salt, value), 8),
                "kind": ls.session.kind, "model": ls.session.model,
                "assigned_at": rfc3339(ls.session.created_at),
                "state": ls.session.state.value,
            })  # fmt: skip
        return rows

    # -- sessions: queries ---------------------------------------------------------------
    async def list_sessions(
        self,
        *,
        selector: Mapping[str, list[str]] | None = None,
        kind: str | None = None,
        state: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
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

        page = await self.registry.list(
            keep, include_ended=state == "ended", limit=limit, cursor=cursor
        )
        items = []
        for s in page.items:
            live = self.engine.live.get(s.id)
            items.append((live.session if live else s).to_dict())
        return items, page.next

    async def get_session(self, session_id: str) -> dict[str, Any]:
        live = self.engine.live.get(session_id)
        if live is not None:
            return live.session.to_dict()
        try:
            return (await self.registry.get(session_id)).to_dict()
        except UnknownSession as exc:
            raise NotFound(f"no session {session_id!r}", code="session_not_found") from exc

    async def session_log(self, session_id: str) -> list[dict[str, Any]]:
        await self.versionlog.flush()
        entries = await self.versionlog.entries(session_id)
        if not entries and session_id not in self.engine.live:
            await self.get_session(session_id)  # 404 when unknown
        return [e.to_dict() for e in entries]

    async def verify_audit(self, session_id: str | None = None) -> list[dict[str, Any]]:
        await self.versionlog.flush()
        reports = await self.versionlog.verify(session_id)
        out = []
        for r in reports:
            if not r.ok:
                self.metrics.audit_verify_failures.inc()
            out.append({"session_id": r.session_id, "ok": r.ok, "count": r.count,
                        "first_bad_seq": r.first_bad_seq, "problem": r.problem})  # fmt: skip
        return out

    async def relabel_session(
        self, session_id: str, labels: Mapping[str, str | None], *, actor: str
    ) -> dict[str, Any]:
        ls = self.engine.live.get(session_id)
        if ls is None:
            await self.get_session(session_id)
            raise Conflict(
                f"session {session_id!r} is not live on this node", code="session_not_live"
            )
        for key, value in labels.items():
            if value is None:
                ls.session.labels.pop(key, None)
            else:
                ls.session.labels[key] = value
        await self.engine.reconcile([ls], self.store.active(), cause="relabel",
                                    event_at=self.clock.monotonic())  # fmt: skip
        return ls.session.to_dict()

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
        return session, self.engine.resolve(session, self.store.active())

    async def attach(
        self,
        session: Session,
        effective: Effective,
        *,
        transport: Transport,
        dialect: Dialect,
        running: Config,
        connect_wire: dict[str, Any] | None,
    ) -> LiveSession:
        """Hold a new live session. ``running`` is the config its upstream starts on: the
        effective config for a gateway late joiner (merged into the connect), the app's own
        config on the control channel (which then gets a ``connect`` push)."""
        if session.id in self.engine.live:
            raise Conflict(f"session {session.id!r} is already registered",
                           code="session_exists")  # fmt: skip
        starts_effective = running == effective.config
        push = PushState.start(
            acknowledging=transport.acknowledging, config=running,
            refs=effective.applied if starts_effective else (), version=1,
        )  # fmt: skip
        ls = LiveSession(session=session, push=push, transport=transport, dialect=dialect)
        self.engine.attach(ls, effective)
        await self.registry.register(session)
        delta = diff(session.client_config, running)
        self.engine.record(ls, cause="connect", status="sent", delta=delta, wire=connect_wire,
                           version=1, config=running)  # fmt: skip
        if not starts_effective:
            ls.push.want(effective.config, effective.applied, "connect",
                         event_at=self.clock.monotonic())  # fmt: skip
            self.engine._sync_session(ls)
        return ls

    async def detach(self, ls: LiveSession, cause: str) -> None:
        if self.engine.detach(ls.session.id) is None:
            return
        policies = {p.id: p for p in self.store.active()}
        for row in self._assignments_of(ls, policies):
            row["state"] = "ended"
            self._ended_assignments[(row["experiment"], ls.session.id)] = row
        while len(self._ended_assignments) > MAX_ENDED_ASSIGNMENTS:
            self._ended_assignments.popitem(last=False)
        now = self.clock.now()
        ls.session.state = SessionState.ENDED
        ls.session.ended_at = now
        ls.session.end_cause = cause
        try:
            await self.registry.end(ls.session.id, cause=cause, at=now)
        except Exception:
            log.exception("registry end failed for session %s", ls.session.id)


_ROLLOUT_COLUMN = {
    "pending": "pending",
    "sent": "sent",
    "acked": "acknowledged",
    "unverified": "unverified",
    "rejected": "rejected",
    "skipped": "unchanged",
    "unchanged": "unchanged",
}


def _rollout_row(version: int, variant: str | None) -> dict[str, Any]:
    return {"version": version, "variant": variant, "targeted": 0, "pending": 0, "sent": 0,
            "acknowledged": 0, "unverified": 0, "rejected": 0, "unchanged": 0}  # fmt: skip


def _jsonable(delta: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in delta.items()}
