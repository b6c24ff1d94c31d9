"""The push engine: resolves effective configs, drives each session's PushState, writes
frames, records every push in the version log, reports what it did to a ``PushObserver``.

Hot path (DESIGN.md §6): one plain loop over the targeted sessions resolves, diffs (the
fan-out: ``fanout``), then takes, encodes (once per distinct frame) and appends each
session's ``sent`` entry (the send path: ``sending``); the frames go once their entries are
durable, pipelined (``write_ahead``). No task per session per push: a congested or slow
session gets an on-demand worker (bounded by a global concurrency cap) and latest-wins
coalescing. One sweeper task handles acknowledgement timeouts and next-turn deadlines
(``timers``); one more writes the live sessions' records to the registry in batches
(``registry_sync``). The engine itself: sessions attached and detached, policy changes
handed to the fan-out, the upstream's answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from controlplane.config import Settings
from controlplane.push.acks import PushPartlyApplied, PushRejected
from controlplane.push.fanout import FanOut
from controlplane.push.live import LiveSession
from controlplane.push.observer import NO_OBSERVER, PushObserver, Tally
from controlplane.push.protocol import Outcome, Push, Status
from controlplane.push.recording import ExposureHook, Recorder
from controlplane.push.registry_sync import RegistrySync
from controlplane.push.rollout_status import live_counts
from controlplane.push.sending import Sender
from controlplane.push.timers import SWEEP_INTERVAL_S, Timers
from controlplane.push.write_ahead import Outgoing
from controlplane.tasks import raise_if_cancelled
from policies.delta import apply as apply_delta
from policies.fields import Config, Delta
from policies.model import Policy
from policies.provenance import PolicyRef
from policies.resolve import Effective, resolve
from policies.selectors import Target
from sessions.clock import Clock
from sessions.model import Session
from sessions.registry import Registry
from sessions.versionlog.core import Canonical, VersionLog

__all__ = ["PushEngine"]

log = logging.getLogger(__name__)

REGISTRY_SYNC_INTERVAL_S = 0.25
# The live-session gauges are a scan of every session: with each registry sync up to ~10,000
# sessions, less often past that, so that the scans take at most this share of the loop (a
# scan of 50,000 sessions took 50-140 ms: every 0.25 s it was a quarter of a fan-out's
# samples at 19,500 sessions and slowed attaches more than linearly; docs/benchmarks.md).
GAUGE_LOOP_SHARE = 0.02
# A sweep this late (the process was stopped, SIGSTOP or a paused VM, or its loop blocked)
# judges no timeout until a sweep interval passes on time: the answers that came meanwhile
# wait unread in the sockets, and the timers would otherwise fire before they are read
STALL_S = 1.0


class PushEngine:
    def __init__(
        self,
        *,
        settings: Settings,
        clock: Clock,
        versionlog: VersionLog,
        registry: Registry,
        observer: PushObserver = NO_OBSERVER,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._log = versionlog
        self._observer = observer
        self.live: dict[str, LiveSession] = {}
        self._timers = Timers(settings.ack_timeout_s)
        self._registry = RegistrySync(registry)
        self._tasks: set[asyncio.Task[None]] = set()
        # set by the service (controlplane.rollouts.halts): a push the upstream refused ("rejected",
        # with the fields it refused) or did not acknowledge in time ("timeout", with every
        # field of the push); called synchronously, must not raise
        self.on_failure: Callable[[LiveSession, Push, str, tuple[str, ...]], None] | None = None
        # per-push observations, batched: one observer call per fan-out (or sweep)
        tally = Tally()
        self._recorder = Recorder(versionlog, observer, tally)
        self._sender = Sender(
            settings=settings, clock=clock, versionlog=versionlog, observer=observer,
            live=self.live, recorder=self._recorder, tally=tally, timers=self._timers,
            registry=self._registry,
        )  # fmt: skip
        self._fanout = FanOut(
            self._sender, clock=clock, versionlog=versionlog, recorder=self._recorder,
            observer=observer, quiet_s=settings.fanout_quiet_s,
            max_delay_s=settings.fanout_max_delay_s, frames_per_s=settings.fanout_frames_per_s,
        )  # fmt: skip

    @property
    def registering(self) -> set[str]:
        """Ids attached here whose registry claim is still in flight (``RegistrySync``)."""
        return self._registry.registering

    @property
    def on_record(self) -> ExposureHook | None:
        """Set by the service (controlplane.rollouts.experiments): every entry but a client's
        own update, with the policy versions it names and whether the session now runs them."""
        return self._recorder.on_record

    @on_record.setter
    def on_record(self, hook: ExposureHook | None) -> None:
        self._recorder.on_record = hook

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        for coro, name in ((self._sweep(), "push-sweeper"), (self._sync(), "registry-sync")):
            task = asyncio.get_running_loop().create_task(coro, name=name)
            self._tasks.add(task)

    async def close(self) -> None:
        self._sender.closing = True
        await self._fanout.close()
        tasks = list(self._tasks) + [ls.worker for ls in self.live.values() if ls.worker]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self._registry.close(self.live)

    # -- sessions ------------------------------------------------------------------------
    def resolve(self, session: Session, policies: Iterable[Policy]) -> Effective:
        return resolve(
            session.client_config,
            policies,
            Target(session.bucket_key, session.kind, session.model, session.labels),
        )

    def attach(self, ls: LiveSession, effective: Effective) -> None:
        held = self.live.get(ls.session.id)
        if held is not None and held is not ls:
            held.attached = False
        self.live[ls.session.id] = ls
        ls.attached = True
        ls.inputs()  # keyed now, not in the first fan-out that reaches the session
        self.adopt(ls, effective)
        # runs them from the start (merged into the connect), or gets a connect push
        status = "unchanged" if ls.push.base == effective.config else "pending"
        for ref in effective.applied:
            ls.policy_status[ref.id] = (ref.version, ref.variant, status)

    def unsynced(self, ls: LiveSession) -> bool:
        """Whether the registry has yet to learn a change of this session."""
        return self._registry.pending(ls)

    def detach(self, session_id: str) -> LiveSession | None:
        ls = self.live.pop(session_id, None)
        if ls is not None:
            ls.attached = False
            outcome = ls.push.abandoned("session ended before the upstream answered")
            if outcome is not None:  # its answer can no longer come: still one terminal entry
                with contextlib.suppress(Exception):  # record() logs and counts a failure
                    self._sender.finish(ls, outcome)
            self._timers.forget(ls)
            self._sender.owed.forget(ls)
            self._registry.forget(ls)
            if ls.worker is not None:
                ls.worker.cancel()
        return ls

    def resync_registry(self) -> None:
        """Write every live session on the next sync, re-registering any the registry lost
        or ended meanwhile (a Redis restart, or this replica declared lost while cut off)."""
        self._registry.mark_all(self.live.values())

    def end_later(self, session_id: str, cause: str, at: float) -> None:
        """A registry ``end`` that failed: retried by the registry sync until it lands."""
        self._registry.end_later(session_id, cause, at)

    def connect_answered(self, ls: LiveSession, version: int, status: Status) -> None:
        """The upstream answered the connect itself (Voice Agent ``session.ready``)."""
        ls.push.connect_answered(version, status)
        self.sync_session(ls)

    def reconnect(
        self, ls: LiveSession, client_config: Config, policies: list[Policy]
    ) -> tuple[Effective, int]:
        """A new connect after the upstream refused the last (``PushState.restart``): the
        session's client config replaced, resolved again; the effective config and its
        version (the caller logs it and sends it)."""
        ls.session.client_config = dict(client_config)
        effective = self.resolve(ls.session, policies)
        version = ls.push.restart(effective.config, effective.applied)
        self.adopt(ls, effective)
        return effective, version

    def mark_ready(self, ls: LiveSession) -> None:
        ls.push.ready = True
        self._registry.mark(ls)  # the registry learns what readiness brought (the upstream id)

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
        """Append one version-log entry for this session (``Recorder.record``)."""
        self._recorder.record(ls, cause=cause, status=status, delta=delta, wire=wire,
                              error=error, version=version, refs=refs, config=config,
                              exposes=exposes)  # fmt: skip

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
        return await self._fanout.run(sessions, policies, cause=cause, event_at=event_at,
                                      next_turn=next_turn, relevant=relevant)  # fmt: skip

    async def client_update(
        self, ls: LiveSession, forwarded: Delta, policies: list[Policy]
    ) -> None:
        """The client's own update went upstream: adopt it into client and upstream config."""
        session = ls.session
        # replaced, not changed in place (LiveSession.inputs)
        session.client_config = apply_delta(session.client_config, forwarded)
        effective = self.resolve(session, policies)
        ls.push.client_changed(forwarded, effective.config)
        self.adopt(ls, effective)

    # -- the upstream's answers ----------------------------------------------------------
    async def upstream_acked(
        self, ls: LiveSession, *, status: str = "acked", note: str | None = None
    ) -> None:
        """The in-flight push was acknowledged (``status="unverified"`` when a control-channel
        app confirms a streaming push it forwarded: applied, but not acknowledgeable);
        ``note``: said in its entry (an ambiguous acknowledgement: ``PushApplied.note``)."""
        outcome = ls.push.acked(
            self._clock.monotonic(), "acked" if status == "acked" else "unverified"
        )
        if outcome is not None:
            if note is not None and outcome.status == "acked":
                outcome = Outcome(outcome.push, "acked", note, outcome.latency)
            self._sender.finish(ls, outcome)
            await self._sender.drive(ls)

    def upstream_queued(self, ls: LiveSession, push: Push) -> None:
        """The transport holds ``push`` behind another update (Voice Agent: one
        ``session.update`` outstanding): no acknowledgement timer runs until it is written."""
        if ls.push.in_flight is push:
            ls.push.queued(push)
            self.sync_session(ls)

    def upstream_written(self, ls: LiveSession, push: Push) -> None:
        """``push``'s frame went upstream now: its acknowledgement timer starts here."""
        if ls.push.in_flight is push:
            ls.push.written(push, self._clock.monotonic())
            self.sync_session(ls)

    async def upstream_refused(
        self, ls: LiveSession, refusal: PushRejected | PushPartlyApplied
    ) -> None:
        """The in-flight push was refused, wholly (``PushRejected``: ``PushState.rejected``)
        or in part with the rest applied (``PushPartlyApplied``: a Voice Agent upstream that
        applies the rest of a partly refused ``session.update``; ``PushState.partly_applied``
        logs it ``acked`` with the applied part as its delta and the refusal as its error).

        The refused fields' values are quarantined (a wholesale refusal naming none: every
        (field, value) of the push); the refusal counts against the policies owning them
        (``on_failure``)."""
        now, code = self._clock.monotonic(), refusal.code
        if isinstance(refusal, PushPartlyApplied):
            outcome = ls.push.partly_applied(code, refusal.reason, now, refusal.fields)
        else:
            outcome = ls.push.rejected(code, refusal.reason, now, refusal.fields)
        if outcome is None:
            return
        if outcome.fields:  # (a partial refusal of none of the push's fields is an ack)
            self._observer.rejected(ls.session.kind, code)
        self._sender.finish(ls, outcome)
        if outcome.fields and self.on_failure is not None:
            self.on_failure(ls, outcome.push, "rejected", outcome.fields)
        await self._sender.drive(ls)

    async def upstream_unverified(self, ls: LiveSession, reason: str) -> None:
        """An answer that cannot be attributed to the in-flight push with certainty: the push
        ends ``unverified`` with ``reason`` (never a guessed ``acked`` or ``rejected``)."""
        outcome = ls.push.unattributed(reason)
        if outcome is not None:
            self._sender.finish(ls, outcome)
            await self._sender.drive(ls)

    async def turn_boundary(self, ls: LiveSession) -> None:
        ls.push.turn_boundary()
        await self._sender.drive(ls)

    async def kick(self, ls: LiveSession) -> None:
        """Send whatever is pending (e.g. once the upstream session is ready)."""
        await self._sender.drive(ls)

    # -- internals -----------------------------------------------------------------------
    def adopt(self, ls: LiveSession, effective: Effective, *, sync: bool = True) -> None:
        """The session's new resolution on its record (``Sender.adopt``)."""
        self._sender.adopt(ls, effective, sync)

    def sync_session(self, ls: LiveSession) -> None:
        """The session's push state changed: its record and timers follow."""
        self._sender.sync_session(ls)

    def flush_metrics(self) -> None:
        """Hand the batched per-push observations to the observer (after a fan-out, on every
        sweep, and before ``/metrics`` renders)."""
        self._sender.flush_metrics()

    async def _sweep(self) -> None:
        while True:
            await self._sweep_sleep()
            self.flush_metrics()
            outgoing: list[Outgoing] = []
            try:
                self._sender.resend_owed(outgoing)  # pushes that never reached their session
                for ls, outcome in self._timers.due(self._clock.monotonic()):
                    if outcome is not None:  # no acknowledgement in time
                        self._sender.finish(ls, outcome)
                        if self.on_failure is not None:
                            self.on_failure(ls, outcome.push, "timeout", tuple(outcome.push.delta))
                    self._sender.queue(ls, {}, outgoing)
            finally:
                await self._sender.send_all(outgoing)

    @staticmethod
    async def _sweep_sleep() -> None:
        """One sweep interval, longer after a stall (``STALL_S``): until an interval passes
        on time, the loop having read what its sockets held (the loop's time, not the
        clock's: tests fake it)."""
        while True:
            started = time.monotonic()
            await asyncio.sleep(SWEEP_INTERVAL_S)
            if time.monotonic() - started < STALL_S:
                return

    async def _sync(self) -> None:
        export_at = 0.0
        while True:
            await asyncio.sleep(REGISTRY_SYNC_INTERVAL_S)
            await self._registry.tick(self.live)  # paced: one batch per burst of changes
            raise_if_cancelled()  # a backend may have turned our cancellation into an error
            started = time.monotonic()  # the loop's time (not the clock's: tests fake it)
            if started >= export_at:
                self._export_gauges()
                export_at = started + (time.monotonic() - started) / GAUGE_LOOP_SHARE

    def _export_gauges(self) -> None:
        self._observer.live(*live_counts(self.live.values()))
