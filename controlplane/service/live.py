"""Live sessions: opened and closed by the edges (gateway, control channel).

``new_session`` resolves a new session's effective config; ``attach`` holds it live, claims
its id cluster-wide (the registry) and records its ``connect`` entry (nothing of a session
that could not be recorded stays live or registered); ``detach`` ends it.

A gateway connect is write-ahead, like a push: the gateway attaches the session, then
``connect_durable`` makes its ``connect`` ``sent`` entry durable (one group commit) BEFORE the
upstream is dialled, so a crash in between never leaves a call the upstream ran with no
record. A connect whose entry could not be written is not dialled; a connect that never
reached an upstream session (log unwritable, dial refused or failed, client gone) ends with a
``connect`` v1 ``rejected`` entry saying why (``not_connected``), and the session ends.

A client-chosen id keeps the app that first registered it (``Session.registered_by``) for
the life of its record: another team's registration of it is refused (``session_exists``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from controlplane.cluster.ports import ClusterPorts
from controlplane.config import Settings
from controlplane.errors import Conflict
from controlplane.intake.store import PolicyStore
from controlplane.metrics import Metrics
from controlplane.push.engine import PushEngine
from controlplane.push.live import LiveSession, Transport
from controlplane.push.protocol import PushState
from controlplane.roles import canonical_app
from controlplane.rollouts.assignments import AssignmentBook
from controlplane.rollouts.experiments import ExperimentBook
from controlplane.service.backend import backend
from controlplane.service.events import PolicySets
from policies.delta import diff
from policies.fields import Config
from policies.resolve import Effective
from sessions.clock import Clock
from sessions.dialects.base import Dialect
from sessions.errors import SessionIdTaken, UnknownSession
from sessions.model import Session, SessionState
from sessions.registry import Registry
from sessions.versionlog.core import VersionLog

__all__ = ["NOT_CONNECTED", "LiveSessions"]

log = logging.getLogger(__name__)

NOT_CONNECTED = "not connected"  # the error of a connect that reached no upstream session


class LiveSessions:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock,
        registry: Registry,
        store: PolicyStore,
        engine: PushEngine,
        sets: PolicySets,
        cluster: ClusterPorts,
        assignments: AssignmentBook,
        experiments: ExperimentBook,
        versionlog: VersionLog,
        metrics: Metrics,
    ) -> None:
        self._node_id = settings.node_id
        self._versionlog = versionlog
        self._metrics = metrics
        self._clock = clock
        self._registry = registry
        self._store = store
        self._engine = engine
        self._sets = sets
        self._cluster = cluster
        self._assignments = assignments
        self._experiments = experiments

    def new_session(
        self, *, kind: str, model: str, labels: Mapping[str, str], client_config: Config,
        session_id: str | None = None, registered_by: str | None = None,
        bucket_id: str | None = None,
    ) -> tuple[Session, Effective]:  # fmt: skip
        """A new session record (not held yet: ``attach``) and its effective config.
        ``bucket_id``: the session whose call it continues (a resume), bucketed as that one."""
        now = self._clock.now()
        session = Session(
            id=session_id or "cps_" + uuid.uuid4().hex,
            kind=kind, model=model, labels=dict(labels), node=self._node_id,
            client_config=dict(client_config), effective_config={}, provenance={}, applied=(),
            desired_version=0, sent_version=0, acked_version=0, state=SessionState.PENDING,
            created_at=now, updated_at=now, ended_at=None, end_cause=None, upstream_id=None,
            registered_by=registered_by,
            bucket_id=bucket_id,
        )  # fmt: skip
        policies = self._store.for_session(session.bucket_key, labels)
        return session, self._engine.resolve(session, policies)

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
            await self._refuse_other_app(session)
            self._refuse_live(session.id)  # registered here while we waited
        starts_effective = running == effective.config
        answers_connect = getattr(transport, "answers_connect", False)
        push = PushState.start(
            acknowledging=transport.acknowledging, config=running,
            refs=effective.applied if starts_effective else (), version=1,
            answers_connect=answers_connect,
        )  # fmt: skip
        ls = LiveSession(session=session, push=push, transport=transport, dialect=dialect)
        self._engine.attach(ls, effective)
        self._engine.registering.add(session.id)
        try:
            with backend("registering the session"):
                await self._registry.register(session)  # the cluster-wide claim of the id
        except SessionIdTaken as exc:
            self._engine.detach(session.id)
            raise Conflict(str(exc), code="session_exists",
                           details={"session_id": session.id}) from exc  # fmt: skip
        except BaseException:
            self._engine.detach(session.id)
            raise
        finally:
            self._engine.registering.discard(session.id)
        try:
            delta = diff(session.client_config, running)
            # exposes: the session runs its policies' values from the start (a Voice Agent
            # gateway session only once its upstream acknowledges the connect)
            runs = not transport.acknowledging or getattr(transport, "runs_at_connect", False)
            self._engine.record(ls, cause="connect", status="sent", delta=delta,
                               wire=connect_wire, version=1, config=running,
                               exposes=starts_effective and runs)  # fmt: skip
            if starts_effective and answers_connect:
                # sent until the upstream answers the connect (SessionPort.connect_answered)
                statuses = ls.policy_status
                for ref in effective.applied:
                    if statuses.get(ref.id) == (ref.version, ref.variant, "unchanged"):
                        statuses[ref.id] = (ref.version, ref.variant, "sent")
            if not starts_effective:
                ls.push.want(effective.config, effective.applied, "connect",
                             event_at=self._clock.monotonic())  # fmt: skip
                self._engine.sync_session(ls)
        except BaseException:
            # nothing of a session that could not be recorded stays live or registered
            self._engine.detach(session.id)
            with contextlib.suppress(Exception):
                await self._registry.end(session.id, cause="attach_failed", at=self._clock.now())
            raise
        return ls

    async def connect_durable(self, ls: LiveSession) -> str | None:
        """Write-ahead of a gateway connect: the session's ``connect`` entry (appended by
        ``attach``) made durable before the upstream is dialled. None when it is; else why the
        connect must not go (the caller refuses it: ``not_connected``); the failure counts in
        ``audit_append_failures_total`` (the audit alert) and ``/readyz`` names it."""
        versionlog = self._versionlog
        try:
            # a group commit: concurrent connects share the write started first (a flush()
            # each would queue behind one another and behind a checkpoint being written)
            write = versionlog.submit()
            if write is None:  # (a backend that writes on flush() only)
                await versionlog.flush()
            else:
                waiter = asyncio.wrap_future(write)
                await asyncio.wait([waiter])
                if waiter.cancelled() or waiter.exception() is not None:
                    await versionlog.flush()  # accounts for the failed write; raises why
        except Exception as exc:
            self._metrics.audit_append_failures.inc()
            log.warning("gateway session %s not connected: its connect entry could not be "
                        "written: %s", ls.session.id, exc)  # fmt: skip
            return f"{NOT_CONNECTED}: the version log could not be written ({exc})"
        return None

    async def not_connected(self, ls: LiveSession, error: str, cause: str) -> None:
        """A gateway connect recorded ``sent`` that reached no upstream session (its entry
        not durable, the dial refused or failed, the client gone first): its ``connect`` v1
        ends ``rejected`` with ``error`` (nothing runs: ``running_config`` null), then the
        session ends with ``cause``."""
        self._engine.record(ls, cause="connect", status="rejected", delta={}, wire=None,
                            error=error, version=1, exposes=False)  # fmt: skip
        self._engine.connect_answered(ls, 1, "rejected")
        await self.detach(ls, cause)

    def _refuse_live(self, session_id: str) -> None:
        if session_id in self._engine.live:
            raise Conflict(f"session {session_id!r} is already registered",
                           code="session_exists", details={"session_id": session_id})  # fmt: skip

    async def _refuse_foreign_trail(self, session_id: str) -> None:
        """An id nobody holds in the registry whose durable trail has entries (the registry
        lost the claim, or it expired) is refused: a second chain would break the trail."""
        if self._cluster.audit is None:
            return
        with backend("checking the session id"):
            [holder] = await self._registry.holders([session_id])
            if holder is not None:  # ours (an ended id of this node continues its chain), or
                return  # another node's: register() refuses it atomically
            taken = await self._cluster.audit.has_trail(session_id)
        if taken:
            raise Conflict(f"session id {session_id!r} already has a durable audit trail; "
                           "a session id is used once", code="session_exists",
                           details={"session_id": session_id})  # fmt: skip

    async def _refuse_other_app(self, session: Session) -> None:
        """An id whose record (live or ended) another app registered is refused: the owner
        of a session id sticks for the life of its record. An id still claimed whose record is
        gone (dropped from the retained ended sessions) is refused too: a session id is used
        once, and its owner can no longer be told."""
        with backend("checking the session id"):
            try:
                earlier: Session | None = await self._registry.get(session.id)
            except UnknownSession:
                earlier = None
            holder = None if earlier is not None else (
                await self._registry.holders([session.id]))[0]  # fmt: skip
        if earlier is None and holder is None:
            return
        if earlier is not None and canonical_app(earlier.registered_by) == session.registered_by:
            return  # the same app continues its own session's chain
        why = (
            "was registered by another app (another team's, or another team-less token); a "
            "session id keeps its owner for the life of its record" if earlier is not None
            else "is still claimed but its record is gone, so its owner cannot be told; a "
            "session id is used once"
        )  # fmt: skip
        raise Conflict(f"session id {session.id!r} {why}: register with a new id, or leave "
                       "session_id out", code="session_exists",
                       details={"session_id": session.id})  # fmt: skip

    async def detach(self, ls: LiveSession, cause: str) -> None:
        unsynced, doubts = self._engine.unsynced(ls), ls.session.in_doubt
        if self._engine.detach(ls.session.id) is None:
            return
        # a push the session's end left unanswered is in doubt (sending.follow_doubts)
        unsynced = unsynced or ls.session.in_doubt != doubts
        self._assignments.ended(ls, {p.id: p for p in self._sets.for_session(ls)})
        self._experiments.ended(ls)
        now = self._clock.now()
        try:
            if unsynced:  # e.g. the upstream id of a short session: kept in its ended record
                with contextlib.suppress(UnknownSession):
                    await self._registry.update(ls.session)
        except Exception as exc:
            log.warning("registry update of ending session %s failed: %s", ls.session.id, exc)
        ls.session.state = SessionState.ENDED
        ls.session.ended_at = now
        ls.session.end_cause = cause
        try:
            await self._registry.end(ls.session.id, cause=cause, at=now)
        except Exception as exc:
            log.warning("registry end of session %s failed, will retry: %s", ls.session.id, exc)
            self._engine.end_later(ls.session.id, cause, now)
