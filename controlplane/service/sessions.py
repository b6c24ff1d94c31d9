"""The one port a session's socket adapter calls: client updates, acknowledgements, readiness.

The gateway (``controlplane.edges.gateway_pump``) and the control channel
(``controlplane.edges.control_channel``) report what happens on a live session through
:class:`SessionPort`, each report one call:

- ``client_update(ls, ClientUpdate)``: the part the control plane refused (logged
  ``rejected``, counted), the part the upstream now runs (adopted: the session's client config,
  its resolution and its push state follow), and its log entry — one trip, where the adapters
  used to call the service and the engine three times;
- ``acknowledge(ls, PushAck)``: the in-flight push applied, refused (fields quarantined),
  partly applied, or unverified;
- ``connect_answered(ls, PushAck, refs, version)``: the upstream answered the connect itself
  (Voice Agent: ``session.ready`` to the first ``session.update``, or a ``session.error``):
  logged once as ``connect`` ``acked`` (the session runs the connect's policy versions
  ``refs`` from now on: its experiment exposure), ``rejected`` or ``unverified``; the push
  state and the rollout status of those versions follow;
- ``late_answer(ls, push, PushAck)``: the upstream answered a push after its outcome was
  recorded (``unverified``: no answer in time): the answer is a later entry of the same
  version (``acked`` with the part applied, or ``rejected``), the error saying it came late;
  the chain stays append-only, the push state, the session's versions and the rollout
  status follow (docs/audit.md, "late answers"). A connect answered late is
  ``connect_answered(..., late=True)``, recorded the same way;
- ``resumed(ls, config)``: the upstream's ``session.ready`` to a ``session.resume``: the
  resumed session runs ``config`` (its echo), which becomes the record's (``connect`` v1
  ``acked`` with the delta from the connect's empty config) and the push state's base;
- ``reconnect(ls, message)``: the client's next ``session.update`` after a refused connect,
  a new connect (logged ``connect`` ``sent``, next config version);
- ``ready``, ``turn_boundary``, ``kick``, ``written`` / ``queued`` (the push's frame went, or
  waits behind another update), ``count`` (a refused client frame).

:class:`EngineSessions` implements it over the push engine; nothing else in the adapters
touches the engine or the push state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

from controlplane.push.acks import (
    ClientUpdate,
    PushAck,
    PushApplied,
    PushPartlyApplied,
    PushRejected,
    PushUnverified,
)
from controlplane.push.engine import PushEngine
from controlplane.push.live import LiveSession
from controlplane.push.protocol import Push, Status
from controlplane.push.rollout_status import mark_policies
from controlplane.push.sending import follow_doubts
from policies.delta import apply as apply_delta
from policies.delta import diff
from policies.fields import Config, Delta
from policies.model import Policy
from policies.provenance import PolicyRef
from sessions.config_at import LATE_ANSWER
from sessions.dialects.base import ordered_fields
from sessions.dialects.voice_agent_v1 import VOICE_AGENT_V1
from sessions.dialects.voice_agent_v1_upstream import canonical_view

__all__ = ["LATE_ANSWER", "EngineSessions", "LateCharges", "RejectCounter", "SessionPort"]


class SessionPort(Protocol):
    """What a live session's adapter reports (see the module docstring)."""

    async def client_update(self, ls: LiveSession, update: ClientUpdate) -> None: ...

    async def acknowledge(self, ls: LiveSession, ack: PushAck) -> None: ...

    def connect_answered(
        self,
        ls: LiveSession,
        ack: PushAck,
        refs: tuple[PolicyRef, ...],
        version: int,
        *,
        late: bool = False,
    ) -> None: ...

    async def late_answer(self, ls: LiveSession, push: Push, ack: PushAck) -> None: ...

    async def resumed(self, ls: LiveSession, config: dict[str, Any]) -> None: ...

    def resuming(self, ls: LiveSession, leftovers: Config | None) -> None: ...

    def reconnect(
        self, ls: LiveSession, message: dict[str, Any]
    ) -> tuple[dict[str, Any], tuple[PolicyRef, ...], int]: ...

    def ready(self, ls: LiveSession, upstream_id: str | None) -> None: ...

    async def turn_boundary(self, ls: LiveSession) -> None: ...

    async def kick(self, ls: LiveSession) -> None: ...

    def written(self, ls: LiveSession, push: Push) -> None: ...

    def queued(self, ls: LiveSession, push: Push) -> None: ...

    def count(self, ls: LiveSession, reason: str) -> None: ...


class LateCharges(Protocol):
    """The rollout guard's side of a late answer (``Halts.answered_late``): the timeout it
    counted for ``push`` retracted, the fields the answer ``refused`` counted instead."""

    def __call__(self, ls: LiveSession, push: Push, refused: tuple[str, ...]) -> None: ...


class RejectCounter(Protocol):
    """Counts a refused client frame by session kind and reason (the ``rejects`` metric)."""

    def __call__(self, kind: str, reason: str) -> None: ...


class _Plane(Protocol):
    """What :meth:`EngineSessions.of` needs of the service (``ControlPlane``)."""

    @property
    def engine(self) -> PushEngine: ...

    @property
    def metrics(self) -> Any: ...

    @property
    def halts(self) -> Any: ...

    def policies_for(self, ls: LiveSession) -> list[Policy]: ...


_NONE: Any = object()  # (no value: never equal to a running one)


def _after_written_push(ls: LiveSession, delta: Delta) -> None:
    """A client update adopted while our push is written but unanswered goes upstream AFTER
    it (a control-channel app forwards what it received in order, and its own update after
    ``update_result``; the gateway never lets the two overlap: a push waiting behind the
    client's update is ``waiting``): the push's answer applies only the fields the client's
    update did not set, so the in-flight push is narrowed to those (differential seeds 22,
    26: the record said the push's value, the upstream ran the client's)."""
    push = ls.push.in_flight
    if push is None or ls.push.waiting:
        return
    kept = {f: v for f, v in push.delta.items() if f not in delta}
    if len(kept) != len(push.delta):
        ls.push.in_flight = dataclasses.replace(push, delta=kept)


class EngineSessions:
    """:class:`SessionPort` over the push engine."""

    __slots__ = ("_count", "_engine", "_late", "_leftovers", "_policies_for")

    def __init__(
        self,
        engine: PushEngine,
        policies_for: Callable[[LiveSession], list[Policy]],
        count: RejectCounter,
        late: LateCharges | None = None,
    ) -> None:
        self._engine = engine
        self._policies_for = policies_for
        self._count = count
        self._late = late
        # resumed sessions awaiting session.ready: their earlier session's policy values
        self._leftovers: dict[str, Config] = {}

    @classmethod
    def of(cls, plane: _Plane) -> EngineSessions:
        """The port of a control plane (its engine, policies, ``rejects`` metric and rollout
        guard)."""
        rejects = plane.metrics.rejects
        return cls(plane.engine, plane.policies_for, lambda k, r: rejects.labels(k, r).inc(),
                   plane.halts.answered_late)  # fmt: skip

    async def client_update(self, ls: LiveSession, update: ClientUpdate) -> None:
        engine = self._engine
        refusal = update.refusal
        if refusal is not None:
            engine.record(ls, cause="client", status="rejected", delta=refusal.delta,
                          wire=refusal.wire, error=refusal.error)  # fmt: skip
            if refusal.counted is not None:
                self._count(ls.session.kind, refusal.counted)
        if update.adopted:
            _after_written_push(ls, update.delta)
            await engine.client_update(ls, update.delta, self._policies_for(ls))
        if update.logged:
            engine.record(ls, cause=update.cause, status=update.status, delta=update.delta,
                          wire=update.wire, error=update.error,
                          exposes=False if update.cause == "upstream" else None)  # fmt: skip
        if update.in_doubt is not None and set(update.in_doubt) != set(ls.session.in_doubt):
            ls.session.in_doubt = tuple(ordered_fields(update.in_doubt))
            engine.sync_session(ls)  # (the state: not synced while a field is in doubt)
        elif (ls.transport.acknowledging and update.logged and update.status in ("sent", "acked")
              and follow_doubts(ls, settled=update.delta.keys())):  # fmt: skip
            engine.sync_session(ls)  # (the client's update set fields an unanswered push left)

    async def acknowledge(self, ls: LiveSession, ack: PushAck) -> None:
        engine = self._engine
        if isinstance(ack, PushApplied):
            await engine.upstream_acked(ls, status=ack.status, note=ack.note)
        elif isinstance(ack, PushRejected | PushPartlyApplied):
            await engine.upstream_refused(ls, ack)
        elif isinstance(ack, PushUnverified):
            await engine.upstream_unverified(ls, ack.reason)

    def connect_answered(
        self,
        ls: LiveSession,
        ack: PushAck,
        refs: tuple[PolicyRef, ...],
        version: int,
        *,
        late: bool = False,
    ) -> None:
        """The upstream's answer to the connect (config version ``version``, carrying
        ``refs``): one entry. Its config is the push state's base, the connect's config
        (nothing else goes upstream before the session is ready). ``late``: the connect was
        recorded ``unverified`` already (no answer in time); this answer is a later entry."""
        error = None
        status: Status
        if isinstance(ack, PushApplied):
            status = "acked"  # the experiment exposure (Recorder: `acked` exposes)
        elif isinstance(ack, PushRejected | PushPartlyApplied):
            status, error = "rejected", f"{ack.code}: {ack.reason}"
        else:
            status, error = "unverified", ack.reason
        if late and status == "unverified":
            return  # (recorded unverified already: nothing new is known)
        if late:
            error = "; ".join(filter(None, (LATE_ANSWER, error)))
        engine = self._engine
        engine.record(ls, cause="connect", status=status, delta={}, wire=None, error=error,
                      version=version, refs=refs)  # fmt: skip
        engine.connect_answered(ls, version, status)
        # `sent` since the connect went (a Voice Agent connect: LiveSessions.attach,
        # reconnect); `unchanged`: merged into a Streaming v3 connect, taken as running from
        # the start (no acknowledgement), until its refusal says none runs
        answered = ("sent", "unchanged", "unverified") if late else ("sent", "unchanged")
        statuses = ls.policy_status
        for ref in refs:
            current = statuses.get(ref.id)
            if current in [(ref.version, ref.variant, was) for was in answered]:
                statuses[ref.id] = (ref.version, ref.variant, status)
        if status == "rejected" and isinstance(ack, PushRejected) and ack.fields:
            self._charge_connect(ls, refs, version, ack.fields)

    async def late_answer(self, ls: LiveSession, push: Push, ack: PushAck) -> None:
        """The upstream answered ``push`` after its outcome was recorded (no acknowledgement
        in time): a later entry of its version with the real status, the error saying it came
        late. Applied (wholly or in part): the push state's base, versions and state follow.
        The rollout guard retracts the timeout it counted (while its window holds it) and
        counts what the answer refused. An unverifiable answer adds nothing."""
        if isinstance(ack, PushUnverified):
            return
        state, engine = ls.push, self._engine
        refused: tuple[str, ...] = ()
        status: Status
        if isinstance(ack, PushApplied):  # (`unverified`: a control app applied it, on a
            applied, status, error = push.delta, ack.status, LATE_ANSWER  # dialect without acks)
        else:
            refused = tuple(sorted(f for f in ack.fields or push.delta if f in push.delta))
            applied = {f: v for f, v in push.delta.items() if f not in refused}
            if isinstance(ack, PushRejected):
                applied = {}
            status = "acked" if applied else "rejected"
            error = f"{LATE_ANSWER}; " + (
                f"refused in part ({ack.code}: {ack.reason}); the rest applied"
                if applied else f"{ack.code}: {ack.reason}")  # fmt: skip
        state.late_answer(push, applied, refused, status)
        config = state.base if applied else apply_delta(state.base, push.delta)
        # exposes: applied late, the session runs it from here (a Streaming v3 app's late
        # `applied` is `unverified` with the late note: the status alone would not say so)
        engine.record(ls, cause=push.cause, status=status, delta=applied or push.delta,
                      wire=None, error=error, version=push.version, refs=push.refs,
                      config=config, exposes=bool(applied))  # fmt: skip
        if push.version == state.sent_version and state.in_flight is None:
            mark_policies(ls, push, status, refused)  # (a later push: its own status stands)
        if self._late is not None:
            self._late(ls, push, refused)
        # its doubt ends (config-at: the late answer resolves it); what it applied is known
        follow_doubts(ls, answered=push.version, settled=applied.keys())
        engine.sync_session(ls)
        await engine.kick(ls)  # (a newer push taken without it: the desired config again)

    async def resumed(self, ls: LiveSession, config: dict[str, Any]) -> None:
        """The client resumed an upstream session (``session.resume``): what it runs is what
        ``session.ready`` echoes (``config``), not the empty config the connect recorded.
        Logged ``connect`` v1 ``acked`` with that delta (config-at applies it: docs/audit.md);
        it becomes the push state's base. Its fields that no policy sets now are the
        client's own (it resumed them), so no push clears them, except a value a policy set
        in the call's earlier session (``resuming``: a leftover of a policy since retired or
        changed, which the session would have lost had it not dropped: cleared); the
        policies' current values are pushed where they differ (the pending push, on
        ``Kick``)."""
        running = canonical_view(config)
        before, engine = ls.push.base, self._engine
        policies = self._policies_for(ls)
        owned = engine.resolve(ls.session, policies).provenance
        leftovers = self._leftovers.pop(ls.session.id, {})
        client: Delta = {f: v for f, v in running.items()
                         if f not in owned and leftovers.get(f, _NONE) != v}  # fmt: skip
        ls.push.base = running
        engine.record(ls, cause="connect", status="acked", delta=diff(before, running),
                      wire=None, version=1, refs=(), config=running, exposes=False)  # fmt: skip
        await engine.client_update(ls, client, policies)
        if ls.push.resend():  # (a leftover to clear, nothing pending yet: sent on Kick)
            engine.sync_session(ls)

    def resuming(self, ls: LiveSession, leftovers: Config | None) -> None:
        """``ls`` resumes a call whose earlier session ended with ``leftovers`` (the values its
        policies set then; None: forget them): at ``resumed`` a field running one of them
        that no policy sets now is a policy's leftover, not the client's own (cleared as a
        retirement would have; docs/audit.md)."""
        if leftovers is None:
            self._leftovers.pop(ls.session.id, None)
        else:
            self._leftovers[ls.session.id] = leftovers

    def _charge_connect(
        self, ls: LiveSession, refs: tuple[PolicyRef, ...], version: int,
        fields: frozenset[str],
    ) -> None:  # fmt: skip
        """A refused connect counts against the rollout guard of the policy versions owning
        the fields the refusal names (docs/policies.md#guard); one naming none is not charged
        (the connect is mostly the client's own message)."""
        on_failure, s = self._engine.on_failure, ls.session
        if on_failure is None:
            return
        config = ls.push.base
        connect = Push(version=version, delta=dict(config), config=config, refs=refs,
                       cause="connect", superseded=(), event_at=None,
                       owners=s.provenance)  # fmt: skip
        on_failure(ls, connect, "rejected", tuple(sorted(fields)))

    def reconnect(
        self, ls: LiveSession, message: dict[str, Any]
    ) -> tuple[dict[str, Any], tuple[PolicyRef, ...], int]:
        """The client's ``session.update`` after the upstream refused the connect: a new
        connect. The session's client config becomes the message's, its effective config is
        resolved again and merged in (as into a first message), logged ``connect`` ``sent``
        with the next config version (its delta from the refused connect's config); answers
        the message to send, its policy versions and version. Raises ``DialectError`` (a
        wrongly-typed value: nothing changes, nothing is sent)."""
        client = VOICE_AGENT_V1.parse_first_update(message).client_config
        engine, before = self._engine, ls.push.base
        effective, version = engine.reconnect(ls, client, self._policies_for(ls))
        forward, skipped = VOICE_AGENT_V1.merge_first_update(message, effective.config)
        wire: dict[str, Any] = {"first_message": forward}
        if skipped:
            wire["skipped"] = dict(skipped)
        engine.record(ls, cause="connect", status="sent", delta=diff(before, effective.config),
                      wire=wire, version=version, config=effective.config,
                      refs=effective.applied, exposes=False)  # fmt: skip
        ls.policy_status.clear()
        ls.prior_status.clear()
        for ref in effective.applied:  # answered by connect_answered
            ls.policy_status[ref.id] = (ref.version, ref.variant, "sent")
        return forward, effective.applied, version

    def ready(self, ls: LiveSession, upstream_id: str | None) -> None:
        """The upstream session is ready (``upstream_id``: its own id, when it has one):
        pushes may go."""
        if upstream_id is not None:
            ls.session.upstream_id = upstream_id
        self._engine.mark_ready(ls)

    async def turn_boundary(self, ls: LiveSession) -> None:
        await self._engine.turn_boundary(ls)

    async def kick(self, ls: LiveSession) -> None:
        await self._engine.kick(ls)

    def written(self, ls: LiveSession, push: Push) -> None:
        self._engine.upstream_written(ls, push)

    def queued(self, ls: LiveSession, push: Push) -> None:
        self._engine.upstream_queued(ls, push)

    def count(self, ls: LiveSession, reason: str) -> None:
        self._count(ls.session.kind, reason)
