"""The push engine: resolves effective configs, drives each session's PushState, writes
frames, records every push in the version log, exports metrics.

Hot path (DESIGN.md §6): one plain loop over the targeted sessions resolves, diffs, encodes
(once per distinct frame) and appends each session's ``sent`` entry. Write-ahead (a replica
killed mid-push has logged every frame it may have sent), pipelined: every ``CHUNK`` pushes
the log starts a group commit on its writer thread (``VersionLog.submit``) while the loop
goes on, and a chunk's frames are written as soon as its commit is done. No task per
session per push: a congested or slow session gets an on-demand worker (bounded by a global
concurrency cap) and latest-wins coalescing. One sweeper task handles acknowledgement
timeouts and next-turn deadlines.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from controlplane.config import Settings
from controlplane.metrics import Metrics, observe_many
from controlplane.push.protocol import Outcome, Push, PushState
from controlplane.tasks import raise_if_cancelled
from policies.delta import apply as apply_delta
from policies.fields import Config, Delta
from policies.model import Match, Policy
from policies.provenance import PolicyRef
from policies.resolve import Effective, Inputs, Resolver, resolve
from policies.selectors import Target, matches
from sessions.clock import Clock
from sessions.dialects.base import Dialect, Encoded
from sessions.dialects.voice_agent_v1_table import CANONICAL_TO_WIRE as VOICE_AGENT_WIRE
from sessions.errors import UnknownSession
from sessions.model import Session, SessionState
from sessions.registry import Registry
from sessions.versionlog.core import Canonical, Submitted, VersionLog, canonical

__all__ = [
    "CONGESTED_BYTES", "LiveSession", "PushEngine", "Transport", "param_fields",
    "write_buffer_size",
]  # fmt: skip

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 0.05
REGISTRY_SYNC_INTERVAL_S = 0.25


_STATES = {state.value: state for state in SessionState}
# rollout statuses of a policy version that the session's upstream runs (sessions_at_version):
# acknowledged, nothing to send, or fields the model cannot take; also "unverified" on
# Streaming v3 (sent, or applied as a control-channel app reported: no acknowledgement
# exists). Not pending, sent and unanswered, rejected, or unverified on the Voice Agent API
# (no answer in time, or none attributable).
_RUNNING = frozenset({"acked", "unchanged", "skipped"})

CONGESTED_BYTES = 256 * 1024  # unsent bytes past which a socket gets a worker, not inline writes
# Write-ahead pipelining: a fan-out hands its entries to the log's writer at least this many
# pushes at a time (more when the writer is still busy: a group commit per idle moment), and
# polls for finished commits every POLL pushes.
CHUNK = 256
POLL = 32
BLOCK_S = 0.05  # the longest a fan-out blocks the loop waiting for its last commits


def write_buffer_size(ws: Any) -> int:
    """Unsent bytes buffered for an aiohttp WebSocket (server or client); 0 when unknown.

    aiohttp exposes no public accessor on client sockets, so this reads the writer's transport.
    """
    transport = getattr(getattr(ws, "_writer", None), "transport", None)
    if transport is None:
        return 0
    try:
        return int(transport.get_write_buffer_size())
    except (AttributeError, RuntimeError):
        return 0


class Transport(Protocol):
    """Where a session's pushes are written (the upstream socket, or a control channel)."""

    acknowledging: bool

    def congested(self) -> bool: ...

    async def write(self, push: Push, wire: dict[str, Any], text: str) -> None:
        """Write one frame; raises ConnectionError when the socket is gone."""
        ...


@dataclass(eq=False, slots=True)
class LiveSession:
    """A session held by this replica: its record, push state, socket and dialect."""

    session: Session
    push: PushState
    transport: Transport
    dialect: Dialect
    locks: Mapping[str, PolicyRef] = field(default_factory=dict)
    # rollout bookkeeping: policy id -> (version, variant, status)
    policy_status: dict[str, tuple[int, str | None, str]] = field(default_factory=dict)
    # a version's status before a push made it pending again (restored if that is refused)
    prior_status: dict[str, str] = field(default_factory=dict)
    worker: asyncio.Task[None] | None = None
    # the last config logged and its encoding (configs are replaced, never changed in place)
    logged_config: tuple[Config, Canonical] | None = None
    # what the session resolves from, keyed once (labels and client config are replaced on
    # change, never changed in place: `inputs()` compares them by identity)
    resolved_from: Inputs | None = None

    @property
    def target(self) -> Target:
        return self.inputs().target

    def inputs(self) -> Inputs:
        s, memo = self.session, self.resolved_from
        labels, client = s.labels, s.client_config
        if memo is None or memo.target.labels is not labels or memo.client_config is not client:
            memo = self.resolved_from = Inputs.of(Target(s.id, s.kind, s.model, labels), client)
        return memo


class PushEngine:
    def __init__(
        self,
        *,
        settings: Settings,
        clock: Clock,
        versionlog: VersionLog,
        registry: Registry,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._log = versionlog
        self._registry = registry
        self._metrics = metrics
        self.live: dict[str, LiveSession] = {}
        self._watch: set[LiveSession] = set()
        self._dirty: set[LiveSession] = set()
        # ids attached here whose registry.register (the claim) is still in flight: a sync
        # that finds them missing must not register them behind it (the claim would then
        # refuse the session its own id: seen in a 600-session storm, issue #19)
        self.registering: set[str] = set()
        self._ends: dict[str, tuple[str, float]] = {}  # registry ends to retry: id -> cause, at
        self._sync_failing = False
        self._workers = asyncio.Semaphore(settings.push_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        # set by the service (controlplane.rollouts.halts): a push the upstream refused ("rejected",
        # with the fields it refused) or did not acknowledge in time ("timeout", with every
        # field of the push); called synchronously, must not raise
        self.on_failure: Callable[[LiveSession, Push, str, tuple[str, ...]], None] | None = None
        # set by the service (controlplane.rollouts.experiments): every entry but a client's own
        # update, with the policy versions it names and whether the session now runs them (exposure)
        self.on_record: Callable[[LiveSession, tuple[PolicyRef, ...], bool], None] | None = None
        # Per-push metric updates, batched: one prometheus_client call per fan-out (or sweep),
        # not one per session (a per-session Histogram.observe was a fifth of a fan-out).
        self._latencies: list[float] = []
        self._superseded = 0
        self._pushed: dict[tuple[str, str], int] = {}
        self._appended = 0
        self._last_config: tuple[Config, Canonical] | None = None  # the last config encoded
        # the last delta encoded, by identity (deltas are values: PushState shares them)
        self._last_frame: tuple[Delta, Dialect, str, _Frame] | None = None

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        for coro, name in ((self._sweep(), "push-sweeper"), (self._sync(), "registry-sync")):
            task = asyncio.get_running_loop().create_task(coro, name=name)
            self._tasks.add(task)

    async def close(self) -> None:
        self._closing = True
        tasks = list(self._tasks) + [ls.worker for ls in self.live.values() if ls.worker]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self._flush_registry()

    # -- sessions ------------------------------------------------------------------------
    def resolve(self, session: Session, policies: Iterable[Policy]) -> Effective:
        return resolve(
            session.client_config,
            policies,
            Target(session.id, session.kind, session.model, session.labels),
        )

    def attach(self, ls: LiveSession, effective: Effective) -> None:
        self.live[ls.session.id] = ls
        ls.inputs()  # keyed now, not in the first fan-out that reaches the session
        self._apply_effective(ls, effective)
        # runs them from the start (merged into the connect), or gets a connect push
        status = "unchanged" if ls.push.base == effective.config else "pending"
        for ref in effective.applied:
            ls.policy_status[ref.id] = (ref.version, ref.variant, status)

    def unsynced(self, ls: LiveSession) -> bool:
        """Whether the registry has yet to learn a change of this session."""
        return ls in self._dirty

    def detach(self, session_id: str) -> LiveSession | None:
        ls = self.live.pop(session_id, None)
        if ls is not None:
            outcome = ls.push.abandoned("session ended before the upstream answered")
            if outcome is not None:  # its answer can no longer come: still one terminal entry
                with contextlib.suppress(Exception):  # record() logs and counts a failure
                    self._finish(ls, outcome)
            self._watch.discard(ls)
            self._dirty.discard(ls)
            if ls.worker is not None:
                ls.worker.cancel()
        return ls

    def resync_registry(self) -> None:
        """Write every live session on the next sync, re-registering any the registry lost
        or ended meanwhile (a Redis restart, or this replica declared lost while cut off)."""
        self._dirty.update(self.live.values())

    def end_later(self, session_id: str, cause: str, at: float) -> None:
        """A registry ``end`` that failed: retried by the registry sync until it lands."""
        self._ends[session_id] = (cause, at)

    def mark_ready(self, ls: LiveSession) -> None:
        ls.push.ready = True
        self._dirty.add(ls)  # the registry learns what readiness brought (the upstream id)

    def record(
        self,
        ls: LiveSession,
        *,
        cause: str,
        status: str,
        delta: Delta | Canonical,
        wire: dict[str, Any] | Canonical | None,
        error: str | None = None,
        version: int | None = None,
        refs: tuple[PolicyRef, ...] | None = None,
        config: Config | None = None,
        exposes: bool | None = None,
    ) -> None:
        """Append one version-log entry for this session (buffered; never awaits I/O).

        ``exposes``: whether the session runs the configuration of ``refs`` once this entry
        takes effect (experiment exposures, ``on_record``); None: decided by the status."""
        # config_hash: what the upstream runs once this entry takes effect (default: the push
        # state's base, e.g. after a client's own update; `audit at` checks it)
        cfg = ls.push.base if config is None else config
        try:
            memo = ls.logged_config
            if memo is not None and memo[0] is cfg:  # the `sent` entry's config, now `acked`
                conf = memo[1]
            else:
                last = self._last_config  # the sessions of a fan-out share configs (Resolver)
                if last is not None and last[0] is cfg:
                    conf = last[1]
                else:
                    conf = canonical(cfg)
                    self._last_config = (cfg, conf)
                ls.logged_config = (cfg, conf)
            self._log.add(
                ls.session.id,
                version=ls.push.desired_version if version is None else version,
                cause=cause,
                policies=ls.session.applied if refs is None else refs,
                delta=delta,
                wire=wire,
                status=status,
                error=error,
                config=conf,
            )
        except Exception:
            self._metrics.audit_append_failures.inc()
            log.exception("version-log append failed for session %s", ls.session.id)
            raise
        self._appended += 1
        hook = self.on_record
        if hook is not None and cause != "client":
            if exposes is None:
                acknowledging = ls.transport.acknowledging
                exposes = (
                    status in _EXPOSING
                    or (status == "sent" and not acknowledging)  # Streaming v3: no answer
                    or (status == "unverified" and acknowledging and error is None)
                )  # (the last: an app's `applied` for a Streaming v3 session)
            try:
                hook(ls, ls.session.applied if refs is None else refs, exposes)
            except Exception:
                log.exception("experiment exposure hook failed for session %s", ls.session.id)

    def _record_unchanged(
        self,
        ls: LiveSession,
        cause: str,
        refs: tuple[PolicyRef, ...],
        push: Push | None = None,
    ) -> None:
        """An ``unchanged`` entry: the policy versions now in effect (``refs``) changed, the
        configuration the upstream runs did not (nothing to send: an experiment's control arm,
        a value the session already had, or every changed value quarantined). It names the
        session's current config version and the upstream's config (``base``)."""
        note = None
        if push is not None and push.held:
            note = "held back (refused earlier by the upstream): " + ", ".join(push.held)
        self.record(ls, cause=cause, status="unchanged", delta=_NO_DELTA, wire=None, error=note,
                    version=None if push is None else push.version, refs=refs)  # fmt: skip

    # -- policy changes ------------------------------------------------------------------
    async def reconcile(
        self,
        sessions: Iterable[LiveSession],
        policies: list[Policy],
        *,
        cause: str,
        event_at: float | None = None,
        next_turn: tuple[str, float] | None = None,
        relevant: Iterable[Policy] | None = None,
    ) -> int:
        """Re-resolve ``sessions`` against ``policies`` and push what changed.

        ``relevant``: only sessions that one of these policies' ``match`` selects (the policy
        versions before and after a change). ``next_turn=(policy_id, deadline_s)`` holds the
        push of sessions that policy targets until their next turn boundary. Returns how many
        sessions got a new version.
        """
        changed = 0
        cache: dict[tuple[Any, ...], _Frame] = {}
        ahead = _WriteAhead(self._log, self._send_frames)
        outgoing = ahead.outgoing  # logged; each sent once its entry is durable
        written_at = None
        resolver = Resolver(policies)
        selects = None
        if relevant is not None:
            distinct: list[Match] = []  # a new version usually keeps its predecessor's match
            for p in relevant:
                if p.match not in distinct:
                    distinct.append(p.match)
            selects = tuple(partial(matches, m) for m in distinct)
        select_one = selects[0] if selects is not None and len(selects) == 1 else None
        now = self._clock.monotonic()
        # A fan-out allocates per session; a collection in the middle of it showed up as 40 %
        # of the fan-out time in profiles (docs/benchmarks.md). Collect after, not during.
        collecting = gc.isenabled()
        gc.disable()
        try:
            for ls in list(sessions):
                s = ls.session
                if self.live.get(s.id) is not ls:
                    continue  # ended while an earlier chunk's frames were written
                inputs = ls.inputs()
                if select_one is not None:
                    if not select_one(inputs.target):
                        continue
                elif selects is not None and not any(m(inputs.target) for m in selects):
                    continue
                effective = resolver.resolve_inputs(inputs)
                hold = None
                if next_turn is not None and any(r.id == next_turn[0] for r in effective.applied):
                    hold = now + next_turn[1]
                elif next_turn is not None and next_turn[0] in ls.policy_status:
                    hold = now + next_turn[1]  # retired / no longer targeted: revert on the turn
                version = ls.push.want(
                    effective.config, effective.applied, cause, hold_until=hold, event_at=event_at
                )
                before = s.applied
                # a session that gets a push is synced once, by the push (not twice)
                self._apply_effective(ls, effective, sync=version is None)
                self._update_policy_status(ls, effective, pending=version is not None)
                if version is None:
                    if effective.applied is not before and effective.applied != before:
                        self._record_unchanged(ls, cause, effective.applied)
                    continue
                changed += 1
                if not self._queue(ls, cache, outgoing):
                    self._sync_session(ls)
                elif len(outgoing) % POLL == 0:
                    await ahead.step()
        finally:
            try:
                await ahead.finish()
                written_at = self._clock.monotonic()
            finally:
                if collecting:
                    gc.enable()
                self.flush_metrics()

        if event_at is not None and written_at is not None and changed:
            self._metrics.convergence.observe(written_at - event_at)
        return changed

    async def client_update(
        self, ls: LiveSession, forwarded: Delta, policies: list[Policy]
    ) -> None:
        """The client's own update went upstream: adopt it into client and upstream config."""
        session = ls.session
        # replaced, not changed in place (LiveSession.inputs)
        session.client_config = apply_delta(session.client_config, forwarded)
        effective = self.resolve(session, policies)
        ls.push.client_changed(forwarded, effective.config)
        self._apply_effective(ls, effective)

    async def upstream_acked(self, ls: LiveSession, *, status: str = "acked") -> None:
        """The in-flight push was acknowledged (``status="unverified"`` when a control-channel
        app confirms a streaming push it forwarded: applied, but not acknowledgeable)."""
        outcome = ls.push.acked(
            self._clock.monotonic(), "acked" if status == "acked" else "unverified"
        )
        if outcome is not None:
            self._finish(ls, outcome)
            await self._drive(ls)

    def upstream_queued(self, ls: LiveSession, push: Push) -> None:
        """The transport holds ``push`` behind another update (Voice Agent: one
        ``session.update`` outstanding): no acknowledgement timer runs until it is written."""
        if ls.push.in_flight is push:
            ls.push.queued(push)
            self._sync_session(ls)

    def upstream_written(self, ls: LiveSession, push: Push) -> None:
        """``push``'s frame went upstream now: its acknowledgement timer starts here."""
        if ls.push.in_flight is push:
            ls.push.written(push, self._clock.monotonic())
            self._sync_session(ls)

    async def upstream_rejected(
        self, ls: LiveSession, code: str, message: str, *, fields: Iterable[str] | None = None
    ) -> None:
        """The in-flight push was refused. ``fields``: the canonical fields the refusal names
        (e.g. from a Voice Agent ``param``), whose values are quarantined; None or empty: every
        (field, value) of the push is (``PushState.rejected``)."""
        named = None if fields is None else frozenset(fields)
        outcome = ls.push.rejected(code, message, self._clock.monotonic(), named)
        if outcome is not None:
            self._metrics.rejects.labels(ls.session.kind, code).inc()
            self._finish(ls, outcome)
            if self.on_failure is not None:
                self.on_failure(ls, outcome.push, "rejected", outcome.fields)
            await self._drive(ls)

    async def upstream_partly_applied(
        self, ls: LiveSession, code: str, message: str, *, fields: Iterable[str]
    ) -> None:
        """The in-flight push was refused in part (``fields``: the canonical fields refused,
        their values quarantined) and the upstream applied the rest (a Voice Agent upstream
        that applies the rest of a partly refused ``session.update``): logged ``acked`` with
        the applied part as its delta and the refusal as its error; the refusal counts against
        the policies owning the refused fields (``PushState.partly_applied``)."""
        outcome = ls.push.partly_applied(code, message, self._clock.monotonic(), frozenset(fields))
        if outcome is not None:
            if outcome.fields:
                self._metrics.rejects.labels(ls.session.kind, code).inc()
            self._finish(ls, outcome)
            if outcome.fields and self.on_failure is not None:
                self.on_failure(ls, outcome.push, "rejected", outcome.fields)
            await self._drive(ls)

    async def upstream_unverified(self, ls: LiveSession, reason: str) -> None:
        """An answer that cannot be attributed to the in-flight push with certainty: the push
        ends ``unverified`` with ``reason`` (never a guessed ``acked`` or ``rejected``)."""
        outcome = ls.push.unattributed(reason)
        if outcome is not None:
            self._finish(ls, outcome)
            await self._drive(ls)

    async def turn_boundary(self, ls: LiveSession) -> None:
        ls.push.turn_boundary()
        await self._drive(ls)

    async def kick(self, ls: LiveSession) -> None:
        """Send whatever is pending (e.g. once the upstream session is ready)."""
        await self._drive(ls)

    # -- internals -----------------------------------------------------------------------
    def _apply_effective(self, ls: LiveSession, effective: Effective, *, sync: bool = True) -> None:
        s = ls.session
        # shared, never changed in place (an Effective is a value; a fan-out's sessions with
        # equal inputs share one)
        s.effective_config = effective.config
        s.provenance = effective.provenance
        s.applied = effective.applied
        ls.locks = effective.locks
        ls.push.desired_owners = effective.provenance  # who owns each field of a push
        if sync:
            self._sync_session(ls)

    def _sync_session(self, ls: LiveSession) -> None:
        s, p = ls.session, ls.push
        s.desired_version = p.desired_version
        s.sent_version = p.sent_version
        s.acked_version = p.acked_version
        s.state = _STATES[p.state]
        s.updated_at = self._clock.now()
        self._dirty.add(ls)
        deadline = p.next_deadline(self._settings.ack_timeout_s)
        if deadline is None:
            self._watch.discard(ls)
        else:
            self._watch.add(ls)

    def _update_policy_status(self, ls: LiveSession, effective: Effective, pending: bool) -> None:
        statuses, applied = ls.policy_status, effective.applied
        if len(statuses) == 1 and len(applied) == 1:  # the common case, without a set
            if applied[0].id not in statuses:
                statuses.clear()
        elif statuses:
            current = {ref.id for ref in applied}
            for policy_id in [p for p in statuses if p not in current]:
                del statuses[policy_id]
        status = "pending" if pending else "unchanged"
        for ref in applied:
            old = statuses.get(ref.id)
            if old is not None and old[0] == ref.version and old[1] == ref.variant:
                if pending and old[2] != "pending":
                    ls.prior_status[ref.id] = old[2]  # restored if the push is refused
                    statuses[ref.id] = (ref.version, ref.variant, "pending")
                continue
            statuses[ref.id] = (ref.version, ref.variant, status)
            if ls.prior_status:
                ls.prior_status.pop(ref.id, None)  # another version: nothing to restore
        if ls.prior_status:  # stashes of versions no longer in effect go
            for policy_id in [p for p, _ in ls.prior_status.items() if p not in statuses]:
                del ls.prior_status[policy_id]

    async def _drive(self, ls: LiveSession) -> None:
        """Write what is due now (logged, then sent), or hand the session to a worker."""
        outgoing: list[_Outgoing] = []
        self._queue(ls, {}, outgoing)
        await self._send_all(outgoing)

    def _queue(
        self, ls: LiveSession, cache: dict[tuple[Any, ...], _Frame], outgoing: list[_Outgoing]
    ) -> bool:
        """Take what is due now and log it, its frame queued on ``outgoing`` for the caller
        (a fan-out's ``_WriteAhead``, a sweep's ``_send_all``), or hand the session to a
        worker; True when a push was taken here (``_log_push`` synced the session). No
        await: a fan-out calls it for every session."""
        if ls.worker is not None or self._closing:
            return False
        if ls.transport.congested():
            self._start_worker(ls)
            return False
        push = ls.push.take(self._clock.monotonic())
        if push is None:
            return False
        frame = self._log_push(ls, push, cache)
        if frame is not None:
            outgoing.append((ls, push, frame))
        return True

    def _start_worker(self, ls: LiveSession) -> None:
        task = asyncio.get_running_loop().create_task(
            self._worker(ls), name=f"push-worker-{ls.session.id}"
        )
        ls.worker = task

    async def _worker(self, ls: LiveSession) -> None:
        try:
            while ls.session.id in self.live:
                async with self._workers:
                    push = ls.push.take(self._clock.monotonic())
                    if push is None:
                        return
                    try:
                        await asyncio.wait_for(self._write(ls, push), self._settings.send_timeout_s)
                    except TimeoutError:
                        self._finish(ls, ls.push.wire_failed(push, "send timed out"))
                        return
        finally:
            ls.worker = None

    async def _write(self, ls: LiveSession, push: Push) -> None:
        """Log the push's ``sent`` entry, make it durable, then send its frame (a worker)."""
        frame = self._log_push(ls, push, {})
        if frame is not None:
            await self._send_all([(ls, push, frame)])

    def _log_push(
        self, ls: LiveSession, push: Push, cache: dict[tuple[Any, ...], _Frame]
    ) -> _Frame | None:
        """Append the push's ``sent`` entry and sync the session; the frame to send after the
        entry is durable (write-ahead), or None when there is nothing to send (no delta, or
        every field skipped by the dialect: recorded here)."""
        if push.superseded:
            self._superseded += len(push.superseded)
        if not push.delta:  # nothing to send (what remains is quarantined, or reverted)
            self._record_unchanged(ls, push.cause, push.refs, push)
            self._sync_session(ls)
            self._mark_policies(ls, push, "unchanged")
            return None
        last = self._last_frame  # consecutive pushes of a fan-out often share the delta
        if (
            last is not None
            and last[0] is push.delta
            and last[1] is ls.dialect
            and last[2] == ls.session.model
        ):
            frame = last[3]
        else:
            key = (ls.dialect.name, ls.session.model, _delta_key(push.delta))
            found = cache.get(key)
            if found is None:
                found = cache[key] = _Frame.encode(ls.dialect, push.delta, ls.session.model)
            frame = found
            self._last_frame = (push.delta, ls.dialect, ls.session.model, frame)
        if frame.text is None or frame.message is None:
            outcome = ls.push.nothing_to_send(push)
            self._finish(ls, outcome, skipped=dict(frame.encoded.skipped))
            return None
        # frame.delta equals push.delta, already encoded for the log (as is the message)
        self.record(ls, cause=push.cause, status="sent", delta=frame.delta, wire=frame.wire,
                    error=frame.note, version=push.version, refs=push.refs,
                    config=push.config)  # fmt: skip
        if ls.transport.acknowledging:
            self._mark_policies(ls, push, "sent")
        else:
            # Streaming v3 has no acknowledgement: the entry stays "sent", never "acked".
            self._count_push(ls.session.kind, "sent")
            self._mark_policies(ls, push, "unverified")
        self._sync_session(ls)
        return frame

    async def _send_all(self, outgoing: list[_Outgoing]) -> None:
        """Make the entries of ``outgoing`` durable (one group commit), then write its frames.

        Write-ahead (DESIGN.md §6, "write it locally first"): a replica killed mid-push has
        logged every frame it may have sent. If the log cannot be written the frames still
        go: the entries stay buffered and are retried, the failure is logged and counted and
        ``/readyz`` reports it; a policy push is not held hostage by the audit disk.
        """
        if not outgoing:
            return
        await _flush_before_frames(self._log, len(outgoing))
        await self._send_frames(outgoing)

    async def _send_frames(self, outgoing: list[_Outgoing]) -> None:
        """Write the frames of logged pushes (whose entries the caller made durable)."""
        for ls, push, frame in outgoing:
            assert frame.message is not None and frame.text is not None
            if self.live.get(ls.session.id) is not ls:
                if not ls.transport.acknowledging:  # (acknowledging: detach recorded it)
                    self._finish(ls, ls.push.wire_failed(push, "session ended before the write"))
                continue
            if ls.transport.acknowledging and ls.push.in_flight is not push:
                continue  # its outcome was recorded meanwhile (ack timeout)
            try:
                await ls.transport.write(push, frame.message, frame.text)
            except (ConnectionError, RuntimeError, OSError) as exc:
                self._finish(ls, ls.push.wire_failed(push, f"write failed: {exc}"))
                continue
            if push.event_at is not None:
                self._latencies.append(self._clock.monotonic() - push.event_at)

    def _finish(
        self, ls: LiveSession, outcome: Outcome, skipped: dict[str, str] | None = None
    ) -> None:
        push = outcome.push
        if outcome.status == "acked" and outcome.latency is not None:
            self._metrics.apply_latency.observe(outcome.latency)
        error = outcome.error
        if skipped:
            error = _skipped_note(skipped)
        # applied (acked, or confirmed by a control-channel app): what the upstream runs now,
        # the push's delta on the base (PushState.acked); else the pushed config as sent
        applied = outcome.status == "acked" or (outcome.status == "unverified" and not error)
        delta = push.delta if outcome.applied is None else outcome.applied
        self.record(ls, cause=push.cause, status=outcome.status, delta=delta,
                    wire=None, error=error, version=push.version, refs=push.refs,
                    config=ls.push.base if applied else push.config)  # fmt: skip
        self._count_push(ls.session.kind, outcome.status)
        self._mark_policies(ls, push, outcome.status, outcome.fields)
        self._sync_session(ls)

    def _count_push(self, kind: str, result: str) -> None:
        key = (kind, result)
        self._pushed[key] = self._pushed.get(key, 0) + 1

    def flush_metrics(self) -> None:
        """Hand the batched per-push counts to prometheus_client (after a fan-out, on every
        sweep, and before ``/metrics`` renders)."""
        if self._latencies:
            latencies, self._latencies = self._latencies, []
            observe_many(self._metrics.push_latency, latencies)
        if self._pushed:
            pushed, self._pushed = self._pushed, {}
            for (kind, result), n in pushed.items():
                self._metrics.pushes.labels(kind, result).inc(n)
        if self._appended:
            self._metrics.audit_appends.inc(self._appended)
            self._appended = 0
        if self._superseded:
            self._metrics.coalesced.inc(self._superseded)
            self._superseded = 0

    def _mark_policies(
        self, ls: LiveSession, push: Push, status: str, refused: tuple[str, ...] = ()
    ) -> None:
        """The rollout status of the push's policy versions. A refusal (or a quarantined value
        held back) counts only against the policy versions owning the refused fields; the
        others of a rejected push are pending again when the rest is queued, else back to
        what they were before the push (their values did not change)."""
        statuses, blocked = ls.policy_status, push.held + refused
        owners = {push.owners[f].id for f in blocked if f in push.owners} if blocked else ()
        for ref in push.refs:
            current = statuses.get(ref.id)
            if current is None or current[0] != ref.version:
                continue
            if ref.id in owners:
                mark = "rejected"
            elif status != "rejected":
                mark = status
            elif ls.push.state == "pending":
                mark = "pending"  # the rest of the refused push is queued again
            else:
                mark = ls.prior_status.get(ref.id, "unchanged")
            statuses[ref.id] = (ref.version, ref.variant, mark)
            if mark != "pending":
                ls.prior_status.pop(ref.id, None)

    async def _sweep(self) -> None:
        timeout = self._settings.ack_timeout_s
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            self.flush_metrics()
            now = self._clock.monotonic()
            outgoing: list[_Outgoing] = []
            try:
                for ls in list(self._watch):
                    outcome = ls.push.timed_out(now, timeout)
                    if outcome is not None:
                        self._finish(ls, outcome)
                        if self.on_failure is not None:
                            self.on_failure(ls, outcome.push, "timeout", tuple(outcome.push.delta))
                        self._queue(ls, {}, outgoing)
                    elif ls.push.can_send(now):
                        self._queue(ls, {}, outgoing)
                    elif ls.push.next_deadline(timeout) is None:
                        self._watch.discard(ls)  # nothing to wait for (its state is synced)
            finally:
                await self._send_all(outgoing)

    async def _sync(self) -> None:
        while True:
            await asyncio.sleep(REGISTRY_SYNC_INTERVAL_S)
            await self._flush_registry()
            raise_if_cancelled()  # a backend may have turned our cancellation into an error
            self._export_gauges()

    async def _flush_registry(self) -> None:
        await self._flush_dirty()
        for session_id, (cause, at) in list(self._ends.items()):
            try:
                await self._registry.end(session_id, cause=cause, at=at)
            except UnknownSession:
                pass  # the registry lost it meanwhile: nothing left to end
            except Exception:
                return  # still failing: the next sync tries again
            self._ends.pop(session_id, None)

    async def _flush_dirty(self) -> None:
        if not self._dirty:
            return
        batch = [ls.session for ls in self._dirty]
        self._dirty.clear()
        try:
            skipped = await self._registry.update_many(batch)
            lost = [self.live[sid] for sid in skipped if sid in self.live]
            waiting = [ls for ls in lost if ls.session.id in self.registering]
            self._dirty.update(waiting)  # written once their registration is done
            lost = [ls for ls in lost if ls.session.id not in self.registering]
            if lost:  # still held here: the registry's record is what is wrong
                taken = await self._registry.register_many([ls.session for ls in lost])
                log.warning("re-registered %d live session(s) the registry had lost or ended",
                            len(lost) - len(taken))  # fmt: skip
                if taken:  # another node claimed the id meanwhile: it holds the trail now
                    log.error("session id(s) now held by another node, not re-registered: %s",
                              ", ".join(taken[:20]))  # fmt: skip
        except Exception as exc:
            if not self._sync_failing:  # once per outage, not every sync
                log.warning("registry update of %d sessions failed; retrying: %s", len(batch), exc)
            self._sync_failing = True
            for ls in self.live.values():
                if ls.session in batch:
                    self._dirty.add(ls)
        else:
            if self._sync_failing:
                log.info("registry sync recovered")
            self._sync_failing = False

    def _export_gauges(self) -> None:
        counts: dict[tuple[str, str], int] = {}
        versions: dict[tuple[str, str], int] = {}
        for ls in self.live.values():
            key = (ls.session.kind, ls.session.state.value)
            counts[key] = counts.get(key, 0) + 1
            acknowledging = ls.session.kind == "voice-agent-v1"  # the dialect, not the socket
            for policy_id, (number, _, status) in ls.policy_status.items():
                if status in _RUNNING or (status == "unverified" and not acknowledging):
                    vkey = (policy_id, str(number))
                    versions[vkey] = versions.get(vkey, 0) + 1
        self._metrics.sessions.clear()
        for (kind, state), n in counts.items():
            self._metrics.sessions.labels(kind, state).set(n)
        self._metrics.sessions_at_version.clear()
        for (policy, version), n in versions.items():
            self._metrics.sessions_at_version.labels(policy, version).set(n)


@dataclass(frozen=True, slots=True)
class _Frame:
    """One encoded push, shared by every session of a fan-out with the same dialect, model
    and delta: the message, its JSON text, the skipped-fields note and the delta itself."""

    encoded: Encoded
    message: dict[str, Any] | None
    text: str | None
    note: str | None
    delta: Canonical  # what the version log records, encoded once for every session
    wire: Canonical | None

    @classmethod
    def encode(cls, dialect: Dialect, delta: Delta, model: str) -> _Frame:
        encoded = dialect.encode(delta, model)
        message = encoded.message
        text = None if message is None else json.dumps(message)
        wire = None if message is None else canonical(message)
        note = _skipped_note(encoded.skipped)
        return cls(encoded, message, text, note, canonical(delta), wire)


_EXPOSING = frozenset({"acked", "unchanged"})  # the session runs the entry's configuration
_NO_DELTA = canonical({})  # shared by every unchanged entry (one EntryTemplate per fan-out)
_Outgoing = tuple[LiveSession, Push, _Frame]  # a logged push whose frame is still to send


async def _flush_before_frames(versionlog: VersionLog, frames: int) -> None:
    try:
        await versionlog.flush()
    except Exception as exc:
        log.warning(
            "version log write failed; the %d push frame(s) waiting on it go regardless, "
            "the entries stay buffered and are retried: %s", frames, exc,
        )  # fmt: skip


class _WriteAhead:
    """A fan-out's write-ahead, pipelined. ``outgoing`` fills with logged pushes; ``step()``
    (every ``POLL`` pushes) starts a write of the entries appended so far once ``CHUNK``
    are waiting and the writer is idle, and sends the frames of every chunk whose write is
    done; ``finish()`` writes the rest and sends every frame, each chunk once durable.

    A write that fails still lets its frames go (``PushEngine._send_all``); ``finish()``'s
    flush reports it and keeps the entries for the retry. A backend whose ``submit()`` is
    None gets one flush before all frames, as without pipelining.
    """

    __slots__ = ("_log", "_send", "_sent", "_started", "_writes", "outgoing")

    def __init__(
        self, versionlog: VersionLog, send: Callable[[list[_Outgoing]], Awaitable[None]]
    ) -> None:
        self.outgoing: list[_Outgoing] = []
        self._log = versionlog
        self._send = send
        self._writes: deque[tuple[int, Submitted]] = deque()  # (outgoing it covers, write)
        self._started = 0  # outgoing[:_started] have their write started
        self._sent = 0  # outgoing[:_sent] had their frames written

    async def step(self) -> None:
        n = len(self.outgoing)
        if n - self._started >= CHUNK and (not self._writes or self._writes[-1][1].done()):
            self._start(n)
        while self._writes and self._writes[0][1].done():
            await self._send_upto(self._writes.popleft()[0])

    async def finish(self) -> None:
        n = len(self.outgoing)
        if n > self._started:
            # even when every earlier write is done: flush() below would yield to the loop,
            # which first runs the acknowledgements of every frame already sent
            self._start(n)
        while self._writes:
            upto, write = self._writes.popleft()
            if not write.done():
                # Block briefly instead of yielding: a yield lets the loop first run every
                # handler that became ready meanwhile (the acknowledgements of the frames
                # just sent, tens of µs each) before the rest of the frames go, and the
                # writer thread has the GIL to itself while we wait. A disk slower than
                # BLOCK_S gets the ordinary asynchronous wait.
                concurrent.futures.wait([write], timeout=BLOCK_S)
            if not write.done():
                await asyncio.wait([asyncio.wrap_future(write)])
            await self._send_upto(upto)
        if n > self._sent or self._log.pending:
            await _flush_before_frames(self._log, n)  # accounts for (and reports) the writes
        await self._send_upto(n)

    def _start(self, n: int) -> None:
        write = self._log.submit()
        if write is not None:  # else the backend writes on flush(), in finish()
            self._writes.append((n, write))
            self._started = n

    async def _send_upto(self, upto: int) -> None:
        if upto > self._sent:
            chunk, self._sent = self.outgoing[self._sent : upto], upto
            await self._send(chunk)


def param_fields(param: str | None) -> frozenset[str] | None:
    """The canonical fields a Voice Agent ``session.error`` ``param`` names (a dotted path
    such as ``system_prompt`` or ``input.turn_detection.min_silence``; a prefix such as
    ``input.turn_detection`` covers its children); None when it names none of ours."""
    if not param:
        return None
    path = tuple(param.split("."))
    named = frozenset(
        name
        for name, wire in VOICE_AGENT_WIRE.items()
        if wire[: len(path)] == path or path[: len(wire)] == wire
    )
    return named or None


def _delta_key(delta: Delta) -> tuple[Any, ...]:
    return tuple(sorted(delta.items(), key=lambda kv: kv[0]))


def _skipped_note(skipped: Any) -> str | None:
    if not skipped:
        return None
    return "skipped " + "; ".join(f"{k}: {v}" for k, v in sorted(dict(skipped).items()))
