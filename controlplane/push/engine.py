"""The push engine: resolves effective configs, drives each session's PushState, writes
frames, records every push in the version log, reports what it did to a ``PushObserver``.

Hot path (DESIGN.md §6): one plain loop over the targeted sessions resolves, diffs, encodes
(once per distinct frame: ``frames``) and appends each session's ``sent`` entry
(``recording``); the frames go once their entries are durable, pipelined (``write_ahead``).
No task per session per push: a congested or slow session gets an on-demand worker (bounded
by a global concurrency cap) and latest-wins coalescing. One sweeper task handles
acknowledgement timeouts and next-turn deadlines (``timers``); one more writes the live
sessions' records to the registry in batches (``registry_sync``).
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
from controlplane.push.frames import Frame, FrameCache, FrameEncoder, skipped_note
from controlplane.push.live import LiveSession
from controlplane.push.observer import NO_OBSERVER, PushObserver, Tally
from controlplane.push.protocol import Outcome, Push, Status
from controlplane.push.recording import ExposureHook, Recorder
from controlplane.push.registry_sync import RegistrySync
from controlplane.push.rollout_status import live_counts, mark_policies
from controlplane.push.timers import SWEEP_INTERVAL_S, Timers
from controlplane.push.write_ahead import Outgoing, flush_before_frames
from controlplane.tasks import raise_if_cancelled
from policies.delta import apply as apply_delta
from policies.fields import Config, Delta
from policies.model import Policy
from policies.provenance import PolicyRef
from policies.resolve import Effective, resolve
from policies.selectors import Target
from sessions.clock import Clock
from sessions.model import Session, SessionState
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

_STATES = {state.value: state for state in SessionState}


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
        self._workers = asyncio.Semaphore(settings.push_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        # set by the service (controlplane.rollouts.halts): a push the upstream refused ("rejected",
        # with the fields it refused) or did not acknowledge in time ("timeout", with every
        # field of the push); called synchronously, must not raise
        self.on_failure: Callable[[LiveSession, Push, str, tuple[str, ...]], None] | None = None
        # per-push observations, batched: one observer call per fan-out (or sweep)
        self._tally = Tally()
        self._recorder = Recorder(versionlog, observer, self._tally)
        self._frames = FrameEncoder()
        self._fanout = FanOut(
            self, clock=clock, versionlog=versionlog, recorder=self._recorder,
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
        self._closing = True
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
        self.live[ls.session.id] = ls
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
            outcome = ls.push.abandoned("session ended before the upstream answered")
            if outcome is not None:  # its answer can no longer come: still one terminal entry
                with contextlib.suppress(Exception):  # record() logs and counts a failure
                    self._finish(ls, outcome)
            self._timers.forget(ls)
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
    def adopt(self, ls: LiveSession, effective: Effective, *, sync: bool = True) -> None:
        s = ls.session
        # shared, never changed in place (an Effective is a value; a fan-out's sessions with
        # equal inputs share one)
        s.effective_config = effective.config
        s.provenance = effective.provenance
        s.applied = effective.applied
        ls.locks = effective.locks
        ls.push.desired_owners = effective.provenance  # who owns each field of a push
        if sync:
            self.sync_session(ls)

    def sync_session(self, ls: LiveSession) -> None:
        s, p = ls.session, ls.push
        s.desired_version = p.desired_version
        s.sent_version = p.sent_version
        s.acked_version = p.acked_version
        s.state = _STATES[p.state]
        s.updated_at = self._clock.now()
        self._registry.mark(ls)
        self._timers.track(ls)

    async def _drive(self, ls: LiveSession) -> None:
        """Write what is due now (logged, then sent), or hand the session to a worker."""
        outgoing: list[Outgoing] = []
        self.queue(ls, {}, outgoing)
        await self._send_all(outgoing)

    def queue(self, ls: LiveSession, cache: FrameCache, outgoing: list[Outgoing]) -> bool:
        """Take what is due now and log it, its frame queued on ``outgoing`` for the caller
        (a fan-out's ``WriteAhead``, a sweep's ``_send_all``), or hand the session to a
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

    def _log_push(self, ls: LiveSession, push: Push, cache: FrameCache) -> Frame | None:
        """Append the push's ``sent`` entry and sync the session; the frame to send after the
        entry is durable (write-ahead), or None when there is nothing to send (no delta, or
        every field skipped by the dialect: recorded here)."""
        if push.superseded:
            self._tally.superseded += len(push.superseded)
        if not push.delta:  # nothing to send (what remains is quarantined, or reverted)
            self._recorder.unchanged(ls, push.cause, push.refs, push)
            self.sync_session(ls)
            mark_policies(ls, push, "unchanged")
            return None
        frame = self._frames.frame(ls.dialect, ls.session.model, push.delta, cache)
        if frame.text is None or frame.message is None:
            outcome = ls.push.nothing_to_send(push)
            self._finish(ls, outcome, skipped=dict(frame.encoded.skipped))
            return None
        # frame.delta equals push.delta, already encoded for the log (as is the message)
        self._recorder.record(ls, cause=push.cause, status="sent", delta=frame.delta,
                              wire=frame.wire, error=frame.note, version=push.version,
                              refs=push.refs, config=push.config)  # fmt: skip
        if ls.transport.acknowledging:
            mark_policies(ls, push, "sent")
            # no acknowledgement timer until the frame is written (send_frames): a write-ahead
            # commit slower than the timeout must not end the push before its frame goes
            ls.push.queued(push)
        else:
            # Streaming v3 has no acknowledgement: the entry stays "sent", never "acked".
            self._tally.count_push(ls.session.kind, "sent")
            mark_policies(ls, push, "unverified")
        self.sync_session(ls)
        return frame

    async def _send_all(self, outgoing: list[Outgoing]) -> None:
        """Make the entries of ``outgoing`` durable (one group commit), then write its frames
        (``write_ahead``)."""
        if not outgoing:
            return
        await flush_before_frames(self._log, len(outgoing))
        await self.send_frames(outgoing)

    async def send_frames(self, outgoing: list[Outgoing]) -> None:
        """Write the frames of logged pushes (whose entries the caller made durable)."""
        for ls, push, frame in outgoing:
            assert frame.message is not None and frame.text is not None
            if self.live.get(ls.session.id) is not ls:
                if not ls.transport.acknowledging:  # (acknowledging: detach recorded it)
                    self._finish(ls, ls.push.wire_failed(push, "session ended before the write"))
                continue
            # a worker's write waits for a congested socket to drain: the timer starts once written
            held = ls.worker is not None and ls.transport.congested()
            if ls.transport.acknowledging:
                if ls.push.in_flight is not push:
                    continue  # its outcome was recorded meanwhile (e.g. the session ended)
                ls.push.queued(push) if held else ls.push.written(push, self._clock.monotonic())
                self._timers.track(ls)
            try:
                await ls.transport.write(push, frame.message, frame.text)
            except (ConnectionError, RuntimeError, OSError) as exc:
                self._finish(ls, ls.push.wire_failed(push, f"write failed: {exc}"))
                continue
            if held and ls.push.in_flight is push:
                ls.push.written(push, self._clock.monotonic())  # its timer starts now
                self._timers.track(ls)
            if push.event_at is not None:
                self._tally.latencies.append(self._clock.monotonic() - push.event_at)

    def _finish(
        self, ls: LiveSession, outcome: Outcome, skipped: dict[str, str] | None = None
    ) -> None:
        push = outcome.push
        if outcome.status == "acked" and outcome.latency is not None:
            self._observer.apply_latency(outcome.latency)
        error = outcome.error
        if skipped:
            error = skipped_note(skipped)
        # applied (acked, or confirmed by a control-channel app): what the upstream runs now,
        # the push's delta on the base (PushState.acked); else the pushed config as sent
        applied = outcome.status == "acked" or (outcome.status == "unverified" and not error)
        delta = push.delta if outcome.applied is None else outcome.applied
        self.record(ls, cause=push.cause, status=outcome.status, delta=delta,
                    wire=None, error=error, version=push.version, refs=push.refs,
                    config=ls.push.base if applied else push.config)  # fmt: skip
        self._tally.count_push(ls.session.kind, outcome.status)
        mark_policies(ls, push, outcome.status, outcome.fields)
        self.sync_session(ls)

    def flush_metrics(self) -> None:
        """Hand the batched per-push observations to the observer (after a fan-out, on every
        sweep, and before ``/metrics`` renders)."""
        self._tally.flush(self._observer)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            self.flush_metrics()
            outgoing: list[Outgoing] = []
            try:
                for ls, outcome in self._timers.due(self._clock.monotonic()):
                    if outcome is not None:  # no acknowledgement in time
                        self._finish(ls, outcome)
                        if self.on_failure is not None:
                            self.on_failure(ls, outcome.push, "timeout", tuple(outcome.push.delta))
                    self.queue(ls, {}, outgoing)
            finally:
                await self._send_all(outgoing)

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
