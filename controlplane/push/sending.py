"""The push engine's send path: each session's due push taken, logged and written.

``Sender.queue`` takes what a session may send now (``PushState.take``), appends its ``sent``
entry (``recording``; the frame encoded once per distinct frame: ``frames``) and queues the
frame for the caller, which writes it once the entry is durable (``write_ahead``). No task
per session per push: a congested socket gets an on-demand worker (bounded by a global cap)
and latest-wins coalescing. ``finish`` records a push's terminal entry. The session's record
and timers follow every step (``sync_session``: the registry marks, the timers). A push that
never reached its session (its write timed out on a congested socket; its entry could not be
written, so its frame was refused: ``refuse``) leaves the session ``owed``, re-sent by the
sweeper once the socket drains and the log writes again (``resend_owed``).

``Sender`` is the fan-out's ``Pusher`` (``fanout``); the ``PushEngine`` (``engine``) owns
it and calls it for the upstream's answers, the sweeper and a session's own pushes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping

from controlplane.config import Settings
from controlplane.push.frames import Frame, FrameCache, FrameEncoder, skipped_note
from controlplane.push.live import LiveSession
from controlplane.push.observer import PushObserver, Tally
from controlplane.push.owed import Owed
from controlplane.push.protocol import Outcome, Push
from controlplane.push.recording import Recorder
from controlplane.push.registry_sync import RegistrySync
from controlplane.push.rollout_status import mark_policies
from controlplane.push.timers import Timers
from controlplane.push.write_ahead import Outgoing, flush_before_frames
from policies.resolve import Effective
from sessions.clock import Clock
from sessions.dialects.base import ordered_fields
from sessions.model import SessionState
from sessions.versionlog.core import VersionLog

__all__ = ["Sender", "follow_doubts"]

_STATES = {state.value: state for state in SessionState}


def follow_doubts(
    ls: LiveSession,
    *,
    doubted: tuple[int, Collection[str]] | None = None,
    answered: int | None = None,
    settled: Collection[str] = (),
) -> bool:
    """An acknowledging session's doubts follow its record (docs/audit.md, "Writes given
    up"): ``doubted`` (version, fields): a push that ended ``unverified`` with no answer
    confirmed leaves its fields in doubt; ``answered``: that version's late answer resolves
    its doubt; ``settled``: fields an applied update set (an acknowledged push, a client
    update acknowledged) are known again. The session's ``in_doubt`` is what remains, as
    config-at's ``doubts`` say. True when it changed (the caller syncs the session)."""
    doubts = ls.doubted
    if answered is not None:
        doubts.pop(answered, None)
    if settled:
        for version, fields in list(doubts.items()):
            fields.difference_update(settled)
            if not fields:
                del doubts[version]
    if doubted is not None and doubted[1]:
        doubts[doubted[0]] = set(doubted[1])
    union: set[str] = set()
    for fields in doubts.values():
        union |= fields
    s = ls.session
    if union == set(s.in_doubt):
        return False
    s.in_doubt = tuple(ordered_fields(union))
    return True


class Sender:
    """Takes, logs and writes the sessions' pushes (``PushEngine``'s send path)."""

    def __init__(
        self,
        *,
        settings: Settings,
        clock: Clock,
        versionlog: VersionLog,
        observer: PushObserver,
        live: Mapping[str, LiveSession],
        recorder: Recorder,
        tally: Tally,
        timers: Timers,
        registry: RegistrySync,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._log = versionlog
        self._observer = observer
        self._live = live
        self._recorder = recorder
        self._tally = tally
        self._timers = timers
        self._registry = registry
        self._frames = FrameEncoder()
        self._workers = asyncio.Semaphore(settings.push_concurrency)
        self.closing = False  # the engine closes: no new push is taken
        self.owed = Owed()  # sessions a push never reached (send timed out, log unwritable)

    @property
    def live(self) -> Mapping[str, LiveSession]:
        return self._live

    # -- a session's record --------------------------------------------------------------
    def adopt(self, ls: LiveSession, effective: Effective, sync: bool = True) -> None:
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

    def sync_session(self, ls: LiveSession, timer: bool = True) -> None:
        """The session's record follows its push state (the registry writes it on its next
        sync), and its timer (``timer``: unless the caller files it itself)."""
        s, p = ls.session, ls.push
        s.desired_version = p.desired_version
        s.sent_version = p.sent_version
        s.acked_version = p.acked_version
        # what the upstream runs (GET, every replica: registry); None: nothing (connect refused)
        s.running_config = None if p.refused_connect else p.base
        s.state = _STATES[p.state]
        if s.in_doubt and s.state is SessionState.SYNCED:  # (Streaming v3: a Warning's doubt)
            s.state = SessionState.UNVERIFIED
        s.updated_at = self._clock.now()
        self._registry.mark(ls)
        if timer:
            self._timers.track(ls)

    def flush_metrics(self) -> None:
        """Hand the batched per-push observations to the observer (after a fan-out, on every
        sweep, and before ``/metrics`` renders)."""
        self._tally.flush(self._observer)

    # -- taking and logging --------------------------------------------------------------
    async def drive(self, ls: LiveSession) -> None:
        """Write what is due now (logged, then sent), or hand the session to a worker."""
        outgoing: list[Outgoing] = []
        self.queue(ls, {}, outgoing)
        await self.send_all(outgoing)

    def queue(self, ls: LiveSession, cache: FrameCache, outgoing: list[Outgoing]) -> bool:
        """Take what is due now and log it, its frame queued on ``outgoing`` for the caller
        (a fan-out's ``WriteAhead``, a sweep's ``send_all``), or hand the session to a
        worker; True when a push was taken here (``_log_push`` synced the session). No
        await: a fan-out calls it for every session."""
        if ls.worker is not None or self.closing:
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
            while ls.session.id in self._live:
                async with self._workers:
                    push = ls.push.take(self._clock.monotonic())
                    if push is None:
                        return
                    try:
                        await asyncio.wait_for(self._write(ls, push), self._settings.send_timeout_s)
                    except TimeoutError:
                        self._gave_up(ls, push)
                        return
        finally:
            ls.worker = None

    def _gave_up(self, ls: LiveSession, push: Push) -> None:
        """A worker's write of ``push`` did not complete within ``send_timeout_s``. Never
        handed to the socket (it waited for its entry to be durable, or for the socket to
        drain): nothing reached the upstream, it ends ``rejected`` "send timed out" and the
        session is owed it (re-sent once the socket drains: ``owed``). Handed (the transport
        wrote its bytes, then waited for the drain: ``transport.handed``): it reaches the
        upstream once it reads, so it is IN DOUBT, never ``rejected``, and never re-sent (the
        upstream would get it twice): an acknowledging session's push ends ``unverified``
        (base unchanged; its answer, when it comes, is recorded late: ``late_answer``); a
        Streaming v3 push keeps its ``sent`` entry, as every one (docs/audit.md)."""
        state = ls.push
        if getattr(ls.transport, "handed", None) is not push:
            self.finish(ls, state.wire_failed(push, "send timed out"))
            self.owed.add(ls, "socket")
            return
        if state.in_flight is not push:
            return  # not acknowledging (``sent`` stands), or answered meanwhile (recorded)
        timeout = self._settings.send_timeout_s
        outcome = state.unattributed(
            f"send timed out after {timeout:g}s with its frame handed to the socket: it "
            "reaches the upstream once the upstream reads (in doubt; an answer is recorded "
            "late)"
        )
        if outcome is not None:
            self.finish(ls, outcome)

    def _lost_after_handing(self, ls: LiveSession, push: Push, exc: BaseException) -> None:
        """The write of ``push`` failed AFTER its frame was handed to the socket (the
        connection lost while aiohttp's ``send_str`` waited for the drain: a compressed
        control channel): some or all of its bytes may have left, so it is in doubt, never
        ``rejected``; the session ends with its connection (docs/audit.md, "Writes given
        up"). An acknowledging session's push ends ``unverified``; a Streaming v3 push keeps
        its ``sent`` entry."""
        state = ls.push
        if state.in_flight is not push:
            return  # not acknowledging (``sent`` stands), or answered meanwhile (recorded)
        outcome = state.unattributed(
            f"the connection was lost after its frame was handed to the socket ({exc}): it "
            "may have reached the upstream (in doubt)"
        )
        if outcome is not None:
            self.finish(ls, outcome)

    async def _write(self, ls: LiveSession, push: Push) -> None:
        """Log the push's ``sent`` entry, make it durable, then send its frame (a worker)."""
        frame = self._log_push(ls, push, {})
        if frame is not None:
            await self.send_all([(ls, push, frame)])

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
            self.finish(ls, outcome, skipped=dict(frame.encoded.skipped))
            return None
        # frame.delta equals push.delta, already encoded for the log (as is the message)
        self._recorder.sent(ls, push, frame.delta, frame.wire, frame.note)
        if ls.transport.acknowledging:
            mark_policies(ls, push, "sent")
            # no acknowledgement timer until the frame is written (send_frames): a write-ahead
            # commit slower than the timeout must not end the push before its frame goes
            ls.push.queued(push)
            self.sync_session(ls, False)
            self._timers.forget(ls)  # (what track() does for a push waiting to be written)
        else:
            # Streaming v3 has no acknowledgement: the entry stays "sent", never "acked".
            self._tally.count_push(ls.session.kind, "sent")
            mark_policies(ls, push, "unverified")
            self.sync_session(ls)
        return frame

    # -- writing -------------------------------------------------------------------------
    async def send_all(self, outgoing: list[Outgoing]) -> None:
        """Make the entries of ``outgoing`` durable (one group commit), then write its frames
        (``write_ahead``)."""
        if not outgoing:
            return
        error = await flush_before_frames(self._log, len(outgoing))
        if error is not None:
            self.refuse(outgoing, error)
            return
        await self.send_frames(outgoing)

    def refuse(self, outgoing: list[Outgoing], error: Exception) -> None:
        """Logged pushes whose entries could not be made durable: their frames are not sent
        (none leaves unrecorded); each ends ``rejected``, its session ``owed``."""
        reason = f"not sent: the version log could not be written ({error})"
        self._observer.log_append_failed()  # (audit_append_failures_total: the alert pages)
        for ls, push, _ in outgoing:
            if self._live.get(ls.session.id) is not ls:
                if not ls.transport.acknowledging:  # (acknowledging: detach recorded it)
                    self.finish(ls, ls.push.wire_failed(push, "session ended before the write"))
                continue
            if ls.transport.acknowledging and ls.push.in_flight is not push:
                continue  # its outcome was recorded meanwhile
            self.finish(ls, ls.push.wire_failed(push, reason))
            self.owed.add(ls, "log")

    def resend_owed(self, outgoing: list[Outgoing]) -> None:
        """Queue on ``outgoing`` what the owed sessions whose cause is gone still miss (a
        sweep's): a new version each (``PushState.resend``)."""
        writable = self._log.write_failing_since is None
        for ls in self.owed.due(writable, lambda ls: self._live.get(ls.session.id) is ls):
            if ls.push.resend():
                self.queue(ls, {}, outgoing)

    async def send_frames(self, outgoing: list[Outgoing]) -> None:
        """Write the frames of logged pushes (whose entries the caller made durable)."""
        clock, timers = self._clock, self._timers
        latencies = self._tally.latencies
        written: list[LiveSession] = []  # their timers are filed together (Timers.track_all)
        try:
            for ls, push, frame in outgoing:
                assert frame.message is not None and frame.text is not None
                transport, state = ls.transport, ls.push
                if not ls.attached:  # (live[ls.session.id] is not ls: ended meanwhile)
                    if not transport.acknowledging:  # (acknowledging: detach recorded it)
                        self.finish(ls, state.wire_failed(push, "session ended before the write"))
                    continue
                # a worker's write waits for a congested socket to drain: the timer starts
                # once written
                held = ls.worker is not None and transport.congested()
                if transport.acknowledging:
                    if state.in_flight is not push:
                        continue  # its outcome was recorded meanwhile (e.g. the session ended)
                    if held:
                        state.queued(push)
                        timers.track(ls)
                    else:
                        state.written(push, clock.monotonic())
                        written.append(ls)
                try:
                    await transport.write(push, frame.message, frame.text)
                except (ConnectionError, RuntimeError, OSError) as exc:
                    if getattr(transport, "handed", None) is push:
                        self._lost_after_handing(ls, push, exc)
                    else:  # nothing of its frame was written
                        self.finish(ls, state.wire_failed(push, f"write failed: {exc}"))
                    continue
                if held and state.in_flight is push:
                    state.written(push, clock.monotonic())  # its timer starts now
                    timers.track(ls)
                if push.event_at is not None:
                    latencies.append(clock.monotonic() - push.event_at)
        finally:
            timers.track_all(written)

    # -- outcomes ------------------------------------------------------------------------
    def finish(
        self, ls: LiveSession, outcome: Outcome, skipped: dict[str, str] | None = None
    ) -> None:
        """Record a push's terminal entry (acked, rejected, unverified, failed on the wire)."""
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
        self._recorder.record(ls, cause=push.cause, status=outcome.status, delta=delta,
                              wire=None, error=error, version=push.version, refs=push.refs,
                              config=ls.push.base if applied else push.config)  # fmt: skip
        self._tally.count_push(ls.session.kind, outcome.status)
        mark_policies(ls, push, outcome.status, outcome.fields)
        if ls.transport.acknowledging and not skipped:  # (Streaming v3: the gateway's doubts)
            if applied:
                follow_doubts(ls, settled=delta.keys())
            elif outcome.status == "unverified":  # no answer confirmed: in doubt
                follow_doubts(ls, doubted=(push.version, delta.keys()))
        self.sync_session(ls)
