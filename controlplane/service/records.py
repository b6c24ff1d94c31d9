"""Session records: lookups, logs, audit answers and relabels (REST ``/v1/sessions``).

A live session is answered from this replica's push engine; another replica's from its owner
(``ClusterPorts.router``) while it lives, else from the registry and the durable audit stream
(distributed mode), so every replica answers for every session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
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
from controlplane.cluster.ports import ClusterPorts
from controlplane.config import Settings
from controlplane.errors import BadRequest, Conflict, NotFound, Unavailable
from controlplane.labels import relabel_problem
from controlplane.metrics import Metrics
from controlplane.push.engine import PushEngine
from controlplane.service.backend import backend
from controlplane.service.events import PolicySets
from policies.delta import apply as apply_delta
from sessions.clock import Clock
from sessions.errors import UnknownSession, VersionLogError
from sessions.model import Session
from sessions.registry import Registry
from sessions.versionlog.core import LogEntry, VersionLog

__all__ = ["SessionRecords", "public"]

log = logging.getLogger(__name__)


class SessionRecords:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock,
        metrics: Metrics,
        registry: Registry,
        versionlog: VersionLog,
        engine: PushEngine,
        sets: PolicySets,
        cluster: ClusterPorts,
    ) -> None:
        self._settings = settings
        self._node_id = settings.node_id
        self._clock = clock
        # a wall clock that never steps: this process's start, then its monotonic clock
        self._stepless = (clock.now(), clock.monotonic())
        self._metrics = metrics
        self._registry = registry
        self._versionlog = versionlog
        self._engine = engine
        self._sets = sets
        self._cluster = cluster
        if cluster.router is not None:
            cluster.router.handle("relabel", self._rpc_relabel)
            cluster.router.handle("log", self._rpc_log)

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
            return ([public(found)] if match and found is not None else []), None
        with backend("listing sessions"):
            page = await self._registry.list(
                keep, include_ended=state == "ended", limit=limit, cursor=cursor
            )
        items = []
        for s in page.items:
            live = self._engine.live.get(s.id)
            items.append(public(live.session if live else s))
        return items, page.next

    async def get_session(self, session_id: str) -> dict[str, Any]:
        session = await self._find(await self.resolve_session_id(session_id))
        if session is None:
            raise NotFound(f"no session {session_id!r}", code="session_not_found")
        return public(session)

    async def _find(self, session_id: str) -> Session | None:
        live = self._engine.live.get(session_id)
        return live.session if live is not None else await self._recorded(session_id)

    async def resolve_session_id(self, ref: str) -> str:
        """A control plane session id, or the upstream's id of a session (``Begin.id``, the
        Voice Agent's ``session_id``) -> the control plane id. Unknown: ``ref`` unchanged
        (the caller answers 404)."""
        if ref in self._engine.live:
            return ref
        if await self._recorded(ref) is not None:
            return ref
        for ls in self._engine.live.values():  # a REST lookup, not a hot path
            if ls.session.upstream_id == ref:
                return ls.session.id
        with backend("reading the session registry"):
            found = await self._registry.find_upstream(ref)
        return ref if found is None else found

    async def call_of(self, upstream_id: str) -> str | None:
        """The bucketing id of the call whose upstream session is ``upstream_id`` (the id of
        its first session: ``Session.bucket_key``), or None when no session ran it. A
        Voice Agent ``session.resume`` continues that call (docs/experiments.md)."""
        found = await self._find(await self.resolve_session_id(upstream_id))
        if found is None or found.upstream_id != upstream_id:
            return None
        return found.bucket_key

    async def _recorded(self, session_id: str) -> Session | None:
        """The registry's record (None: unknown); registry failures answer 503."""
        with backend("reading the session registry"):
            try:
                return await self._registry.get(session_id)
            except UnknownSession:
                return None

    async def _owner_elsewhere(self, session_id: str) -> str | None:
        """The replica holding this session's socket, if another one and routing is on."""
        if self._cluster.router is None or session_id in self._engine.live:
            return None
        with backend("reading the session owner"):
            owner = await self._registry.owner(session_id)
        return owner if owner is not None and owner != self._node_id else None

    async def session_log(
        self, session_id: str, *, local_only: bool = False
    ) -> list[dict[str, Any]]:
        session_id = await self.resolve_session_id(session_id)
        if not local_only and session_id not in self._engine.live:
            remote = await self._remote_log(session_id)
            if remote is not None:
                return remote
        await self._versionlog.flush()
        entries = await self._versionlog.entries(session_id)
        if not entries and session_id not in self._engine.live:
            await self.get_session(session_id)  # 404 when unknown
        return [e.to_dict() for e in entries]

    async def _remote_log(self, session_id: str) -> list[dict[str, Any]] | None:
        """A log kept by another replica: from its owner while live, else from the durable
        audit stream. None when the local log is the one to read."""
        session = await self._recorded(session_id) if self._cluster.audit else None
        if session is not None and session.node == self._node_id:
            return None
        owner = await self._owner_elsewhere(session_id)
        if owner is not None and self._cluster.router is not None:
            with contextlib.suppress(Unavailable):  # gone: its shipped entries remain
                return list(await self._cluster.router.call(owner, "log",
                                                           {"session_id": session_id}))  # fmt: skip
        if self._cluster.audit is None:
            return None
        with backend("reading the durable audit stream"):
            rows = await self._cluster.audit.session_rows(session_id)
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
        # recomputing every hash is seconds of CPU for a large log: off the event loop, which
        # relays every live call (in it, 100,000 entries stalled the loop ~3 s)
        answer = await asyncio.to_thread(verify_answer, trail, session_id, trusted)
        if trail.source == "local":  # this replica signs checkpoints: none may go missing
            evidence = await asyncio.to_thread(checkpoint_evidence, self._settings.data_dir)
            # an entry is overdue when it is older than the grace by the wall clock AND by a
            # clock that never steps: a wall clock stepping forward makes the entries awaiting
            # their checkpoint look old (a false "missing" alarm that paged), a step back the
            # entries written after it (docs/reliability.md, "Clock steps")
            wall, mono = self._stepless
            now = min(self._clock.now(), wall + self._clock.monotonic() - mono)
            answer = await asyncio.to_thread(require_checkpoints, answer, trail, evidence, now=now)
        broken = sum(1 for r in answer["items"] if not r["ok"])
        broken += 0 if answer["checkpoints"]["ok"] else 1
        if broken:
            self._metrics.audit_verify_failures.inc(broken)
        return answer

    async def config_at(
        self, session_id: str, at: float, *, public_keys: Sequence[str] = ()
    ) -> dict[str, Any]:
        """By an upstream id, the session of that call running at ``at``: a Voice Agent call
        resumed through the gateway is several sessions sharing it (the id's index names the
        latest), so an instant before the latest one began is answered by the call's session
        that began last before it (docs/api.md, config-at)."""
        trusted = parse_public_keys(public_keys)
        ref, session_id = session_id, await self.resolve_session_id(session_id)
        trail = await self._audit_trail(session_id)
        try:
            return await asyncio.to_thread(config_at_answer, trail, session_id, at, trusted)
        except NotFound as exc:
            if exc.code != "before_session" or ref == session_id:
                raise
            earlier = await self._call_session_at(ref, at)
            if earlier is None or earlier == session_id:
                raise
        trail = await self._audit_trail(earlier)
        return await asyncio.to_thread(config_at_answer, trail, earlier, at, trusted)

    async def _call_session_at(self, upstream_id: str, at: float) -> str | None:
        """The session with upstream id ``upstream_id`` created last at or before ``at`` (a
        registry scan: only for an audit question about a resumed call's earlier part)."""
        best: Session | None = None
        cursor: str | None = None

        def of_call(s: Session) -> bool:
            return s.upstream_id == upstream_id

        while True:
            with backend("listing sessions"):
                page = await self._registry.list(
                    of_call, include_ended=True, limit=1000, cursor=cursor
                )
            for s in page.items:
                if s.created_at <= at and (best is None or s.created_at > best.created_at):
                    best = s
            if page.next is None:
                return None if best is None else best.id
            cursor = page.next

    async def _audit_trail(self, session_id: str | None) -> Trail:
        """Another replica's session from the durable audit stream, else the local log."""
        remote = False
        if session_id is not None and self._cluster.audit is not None:
            session = await self._recorded(session_id)
            remote = session_id not in self._engine.live and (
                session is None or session.node != self._node_id
            )
        with backend("reading the audit trail"):
            return await read_trail(self._versionlog, self._cluster.audit, session_id,
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
        ls = self._engine.live.get(session_id)
        if ls is None:
            owner = None if local_only else await self._owner_elsewhere(session_id)
            if owner is not None and self._cluster.router is not None:
                payload = {"session_id": session_id, "labels": dict(labels), "actor": actor}
                return dict(await self._cluster.router.call(owner, "relabel", payload))
            await self.get_session(session_id)
            raise Conflict(
                f"session {session_id!r} is not live on this node", code="session_not_live"
            )
        # replaced, not changed in place (LiveSession.inputs)
        ls.session.labels = apply_delta(ls.session.labels, labels)
        # who relabelled: the entries it causes (cause relabel) carry no actor
        change = ", ".join(f"{k}={v}" if v is not None else f"{k}-" for k, v in labels.items())
        log.info("session %s relabelled by %s: %s", session_id, actor or "unknown", change)
        await self._engine.reconcile([ls], self._sets.for_session(ls), cause="relabel",
                                    event_at=self._clock.monotonic())  # fmt: skip
        return ls.session.to_dict()

    async def _rpc_relabel(self, payload: dict[str, Any]) -> dict[str, Any]:
        labels = payload.get("labels")
        problem = relabel_problem(labels)  # the REST rules: the asking replica applied them
        if problem is not None:
            raise BadRequest(problem)
        assert isinstance(labels, dict)
        return await self.relabel_session(str(payload["session_id"]), labels,
                                          actor=str(payload.get("actor", "")),
                                          local_only=True)  # fmt: skip

    async def _rpc_log(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        return await self.session_log(str(payload["session_id"]), local_only=True)


def public(session: Session) -> dict[str, Any]:
    """A session as the REST API shows it: a Streaming v3 session's ``versions.acked`` is
    null (the protocol acknowledges nothing: no version is ever claimed acknowledged; the
    push state's own counter stays internal)."""
    body = session.to_dict()
    if session.kind == "streaming-v3":
        body["versions"]["acked"] = None
    return body
