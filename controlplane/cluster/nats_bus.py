"""NATS adapter: the connection and the ``CP_POLICY`` policy bus.

The NATS adapter is three modules, the only ones that import ``nats`` (import-linter checks
it): this one (connection, policy stream), ``nats_audit`` (``CP_AUDIT``) and ``nats_rpc``
(owner requests). Every NATS error is translated there into ``controlplane.errors`` types
or logged.

Policy bus (DESIGN.md §4): stream ``CP_POLICY`` on ``<prefix>.policy.>``, one event per message,
``Nats-Msg-Id: <policy_id>:<version>``. ``publish`` is optimistic concurrency on the subject:
it reads the subject's last event and publishes with ``Nats-Expected-Last-Subject-Sequence``,
so two replicas racing for the same version cannot both win (the loser answers 409).

Each replica reads every event through ONE ephemeral pull consumer (never one per session):
deliver all (the whole stream is replayed on start, before readiness), explicit acks, a
finite ``max_deliver`` with backoff, ``ack_wait`` sized to a full fan-out. Malformed events
are counted, logged with their reason and acked: they are never redelivered forever.
If the consumer disappears (NATS restarted, or it idled past its inactivity threshold while
disconnected) it is recreated from the next stream sequence, so nothing is skipped.

Signed events (optional, ``controlplane.signing``): with a key set, ``publish`` adds
``Cp-Signature`` and the consumer acks, counts (``result="unsigned"|"bad_signature"|
"role_above_key"``: a key scoped to a role below the event's, controlplane.signing) and
logs, but never applies, an event without a valid one. Liveness (``problem()``, for
``/readyz``): a fetch that returned events, or an empty one followed by an answered PING,
is progress; a server that answers nothing (stopped, unreachable) makes none
(``controlplane.health.FeedWatch``).

"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any, Final

import nats
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from controlplane.cluster.nats_connection import NatsConnection, redact
from controlplane.cluster.policy_feed import (
    REFUSED,
    RefusalLog,
    name_safe,
    scope_allows,
    subject_token,
    version_conflict,
)
from controlplane.errors import Conflict, ControlPlaneError, Unavailable
from controlplane.health import FeedWatch
from controlplane.intake.bus import (
    MAX_EVENT_BYTES,
    EventHandler,
    PolicyEvent,
    UndecodableEvent,
    decode_event,
)
from controlplane.metrics import Metrics
from controlplane.signing import EventSigner
from controlplane.tasks import raise_if_cancelled, stop_task
from sessions.clock import Clock, SystemClock

__all__ = [
    "NatsConnection",
    "NatsPolicyBus",
    "ensure_stream",
    "redact",
    "subject_token",
    "translate",
]

log = logging.getLogger(__name__)

WRONG_LAST_SEQUENCE: Final = 10071  # JetStream error code for Nats-Expected-Last-*-Sequence
FETCH_BATCH: Final = 64
FETCH_WAIT_S: Final = 2.0  # also bounds how long a lost pull request goes unnoticed
PING_WAIT_S: Final = 2  # after an empty fetch: is NATS answering at all? (whole seconds)
CONSUMER_IDLE_S: Final = 3600.0  # an ephemeral consumer outlives an hour-long disconnection
RETRY_MAX_S: Final = 10.0
POLICY_DUPLICATE_WINDOW_S: Final = 24 * 3600.0
MAX_POLICY_BYTES: Final = MAX_EVENT_BYTES
DECODE_INLINE_BYTES: Final = 64 * 1024  # larger event bodies are decoded in a thread


async def ensure_stream(js: JetStreamContext, config: api.StreamConfig) -> api.StreamInfo:
    """Create the stream, or bring the settings we manage up to date on an existing one
    (subjects, age, dedupe window, size cap; storage and replicas stay as the operator set)."""
    assert config.name is not None
    try:
        info = await js.stream_info(config.name)
    except nats.js.errors.NotFoundError:
        log.info("creating JetStream stream %s (%s)", config.name, config.subjects)
        return await js.add_stream(config)
    current = info.config
    managed = ("subjects", "max_age", "duplicate_window", "max_msg_size", "discard", "retention")
    wanted = {k: getattr(config, k) for k in managed}
    if all(_same(getattr(current, k), v) for k, v in wanted.items()):
        return info
    log.info("updating JetStream stream %s: %s", config.name, wanted)
    try:
        return await js.update_stream(current.evolve(**wanted))
    except nats.js.errors.APIError as exc:
        log.warning("stream %s keeps its existing settings (update refused: %s)", config.name, exc)
        return info


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float | int) and isinstance(b, float | int):
        return abs(a - b) < 1e-3
    return bool(a == b)


def translate(what: str, exc: Exception) -> ControlPlaneError:
    why = str(exc) or type(exc).__name__
    if isinstance(exc, nats.js.errors.ServiceUnavailableError | nats.errors.NoRespondersError):
        why = "JetStream is not enabled on this NATS server (run nats-server -js)"  # its 503
        if isinstance(exc, nats.js.errors.APIError) and exc.description:  # a stream at its cap
            why = f"JetStream refused it: {exc.description}"  # e.g. "maximum bytes exceeded"
    return Unavailable(f"NATS: {what} failed: {why}", code="nats_unavailable")


class NatsPolicyBus:
    """``controlplane.intake.bus.PolicyBus`` over JetStream (see the module docstring)."""

    def __init__(
        self, conn: NatsConnection, *, node_id: str, metrics: Metrics, clock: Clock | None = None
    ) -> None:
        s = conn.settings
        self._conn = conn
        self._node = node_id
        self._metrics = metrics
        self.stream = s.nats_policy_stream
        self._prefix = f"{s.nats_subject_prefix}.policy."
        self._handlers: list[EventHandler] = []
        self._sub: JetStreamContext.PullSubscription | None = None
        self._consumer: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_seq = 0  # stream sequence of the last event handled
        self.replayed = False  # the stream as it was at start has been applied
        self._signer = EventSigner(s.policy_signing_key, s.policy_signing_key_file)
        self._unsigned_through = s.policy_unsigned_through_seq  # stored before signing began
        self._refusals = RefusalLog(clock or SystemClock())
        self.watch = FeedWatch(
            clock or SystemClock(), s.readiness_stall_s, lambda: conn.connected,
            lag_s=s.readiness_lag_s,
        )  # fmt: skip

    def subject(self, policy_id: str) -> str:
        return self._prefix + subject_token(policy_id)

    def stream_config(self) -> api.StreamConfig:
        s = self._conn.settings
        return api.StreamConfig(
            name=self.stream,
            description="controlplane policy events (every version, kept forever)",
            subjects=[self._prefix + ">"],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.NEW,  # a cap refuses publishes, never deletes versions
            max_age=0,  # every version is kept: history, rollback and replay need them
            max_msgs=-1,
            max_bytes=-1,
            max_msg_size=MAX_POLICY_BYTES,
            duplicate_window=POLICY_DUPLICATE_WINDOW_S,
            num_replicas=s.nats_replicas,
        )

    def consumer_config(self, start_seq: int | None = None) -> api.ConsumerConfig:
        s = self._conn.settings
        ack_wait = s.policy_ack_wait_s
        backoff = [ack_wait * 2**i for i in range(min(s.policy_max_deliver - 1, 4))]
        return api.ConsumerConfig(
            name=f"cp-{name_safe(self._node)}-{uuid.uuid4().hex[:12]}",
            description=f"policy events for replica {self._node}",
            deliver_policy=(
                api.DeliverPolicy.ALL if start_seq is None else api.DeliverPolicy.BY_START_SEQUENCE
            ),
            opt_start_seq=start_seq,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            backoff=backoff,
            max_deliver=s.policy_max_deliver,
            max_ack_pending=FETCH_BATCH * 4,
            filter_subject=self._prefix + ">",
            replay_policy=api.ReplayPolicy.INSTANT,
            inactive_threshold=CONSUMER_IDLE_S,
            mem_storage=True,  # ephemeral: rebuilt from the stream whenever it is lost
            num_replicas=1,
        )

    # -- PolicyBus -----------------------------------------------------------------------
    def subscribe(self, handler: EventHandler) -> None:
        self._handlers.append(handler)

    async def start(self) -> None:
        """Ensure the stream, create this replica's consumer, apply every stored event, then
        keep consuming in an owned task. Returns once the replay is done."""
        js = self._conn.js
        try:
            info = await ensure_stream(js, self.stream_config())
            await self._subscribe(None)
        except nats.errors.Error as exc:
            raise translate(f"setting up stream {self.stream}", exc) from exc
        target = info.state.last_seq
        if self._signer.enabled:
            log.info("policy events are signed, and refused unless validly signed (%d key(s))",
                     len(self._signer.current()))  # fmt: skip
        log.info("replaying %s up to sequence %d", self.stream, target)
        try:
            while self._last_seq < target:
                if await self._fetch_once(replaying=True):
                    continue
                assert self._sub is not None
                pending = await self._sub.consumer_info()
                if pending.num_pending == 0 and pending.num_ack_pending == 0:
                    break  # the rest of the range was deleted: nothing more to read
        except nats.errors.Error as exc:
            raise translate(f"replaying stream {self.stream}", exc) from exc
        self.replayed = True
        self._refusals.flush()
        self.watch.progress()
        log.info("policy replay done (%d events in the stream)", info.state.messages)
        self._task = asyncio.get_running_loop().create_task(
            self._consume(), name="nats-policy-consumer"
        )

    def problem(self) -> str | None:
        """Why policy intake is stalled (None: healthy, or still replaying)."""
        return self.watch.problem() if self.replayed else None

    async def close(self) -> None:
        await stop_task(self._task)
        self._task = None
        await self._drop_consumer()
        self._handlers.clear()

    async def publish(self, event: PolicyEvent) -> None:
        """Store the event; returns once JetStream acknowledged it. Conflict (409) when the
        subject already holds this or a later version, or another publish won the race."""
        if not self._conn.connected:  # fail fast: never leave a publish buffered for later
            raise Unavailable("not connected to NATS; retry", code="nats_unavailable")
        js = self._conn.js
        subject = self.subject(event.policy_id)
        try:
            last_seq, last_version = await self._last(subject)
            if event.type in ("policy.halted", "policy.wave"):  # of the version stored last
                if last_version != event.version:
                    raise version_conflict(event, last_version or 0)
            elif last_version is not None and last_version >= event.version:
                raise version_conflict(event, last_version)
            headers = {
                "Nats-Msg-Id": event.msg_id,
                "Nats-Expected-Last-Subject-Sequence": str(last_seq),
            }
            data = json.dumps(event.to_json(), separators=(",", ":")).encode()
            headers.update(self._signer.headers(event.msg_id, data))
            ack = await js.publish(subject, data, headers=headers, stream=self.stream)
        except nats.js.errors.APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise Conflict(
                    f"policy {event.policy_id!r} changed while publishing version "
                    f"{event.version} (another replica published first); retry",
                    details={"id": event.policy_id, "version": event.version},
                ) from exc
            raise translate(f"publish of {event.msg_id}", exc) from exc
        except (nats.errors.Error, OSError) as exc:
            raise translate(f"publish of {event.msg_id}", exc) from exc
        if ack.duplicate:
            raise version_conflict(event, event.version)

    async def last_version(self, policy_id: str) -> int | None:
        """The version of the last event stored for this policy (None: none, or unreadable)."""
        if not self._conn.connected:
            raise Unavailable("not connected to NATS; retry", code="nats_unavailable")
        try:
            return (await self._last(self.subject(policy_id)))[1]
        except (nats.errors.Error, OSError) as exc:
            raise translate(f"reading policy {policy_id!r}", exc) from exc

    async def _last(self, subject: str) -> tuple[int, int | None]:
        try:
            msg = await self._conn.js.get_last_msg(self.stream, subject)
        except nats.js.errors.NotFoundError:
            return 0, None
        seq = int(msg.seq or 0)
        if seq > self._unsigned_through and self._signer.check(msg.headers, msg.data or b""):
            return seq, None  # not ours to trust: the local store decides
        try:
            version = decode_event(msg.data or b"").version
        except UndecodableEvent:
            version = None  # malformed last event: the local store decides
        return seq, version

    # -- consumer ------------------------------------------------------------------------
    async def _subscribe(self, start_seq: int | None) -> None:
        config = self.consumer_config(start_seq)
        js = self._conn.js
        await js.add_consumer(self.stream, config)
        self._consumer = config.name
        self._sub = await js.pull_subscribe_bind(config.name, stream=self.stream)

    async def _drop_consumer(self) -> None:
        sub, self._sub = self._sub, None
        name, self._consumer = self._consumer, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if name is not None and self._conn.connected:
            with contextlib.suppress(Exception):
                await self._conn.js.delete_consumer(self.stream, name)

    async def _consume(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._fetch_once(replaying=False)
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the connection or the consumer: rebuild and go on
                raise_if_cancelled()
                log.warning("policy consumer: %s; retrying in %.1fs", exc, delay)
                if self._conn.connected:
                    await asyncio.sleep(delay)
                else:
                    await self._conn.wait_up(delay)  # a reconnection cuts the backoff short
                delay = min(delay * 2, RETRY_MAX_S)
                await self._resubscribe()

    async def _resubscribe(self) -> None:
        if not self._conn.connected:
            return
        with contextlib.suppress(Exception):
            if self._sub is not None:
                await self._sub.consumer_info()
                return  # the consumer is still there: the error was transient
        await self._drop_consumer()
        try:
            await self._subscribe(self._last_seq + 1)
            log.info("policy consumer recreated from sequence %d", self._last_seq + 1)
        except Exception as exc:
            log.warning("policy consumer could not be recreated yet: %s", exc)

    async def _fetch_once(self, *, replaying: bool) -> bool:
        """Fetch and handle one batch; False when there was nothing to read."""
        if self._sub is None:
            raise Unavailable("policy consumer is not subscribed", code="nats_unavailable")
        wait = 1.0 if replaying else FETCH_WAIT_S
        try:
            msgs = await self._sub.fetch(FETCH_BATCH, timeout=wait)
        except nats.errors.TimeoutError:
            # nothing to read, or nobody answering: a PING tells them apart (a stopped server
            # keeps its socket open and answers nothing; FeedWatch then sees no progress)
            self._refusals.flush()
            with contextlib.suppress(nats.errors.TimeoutError):
                await self._conn.client.flush(timeout=PING_WAIT_S)
                if self._conn.connected:  # a flush while reconnecting returns at once
                    self.watch.progress()
                    self.watch.behind(0)  # an answered empty fetch: nothing is pending
            return False
        self.watch.progress()
        for msg in msgs:
            await self._handle(msg)
        if msgs:
            self.watch.behind(msgs[-1].metadata.num_pending)
        return bool(msgs)

    async def _handle(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        data = msg.data or b""
        problem: str | None = None
        kind: str
        event: PolicyEvent | None = None
        try:
            event = await self._decode(msg.subject, data)
            kind = event.type
        except UndecodableEvent as exc:  # acked: counted once, never redelivered
            kind, problem = exc.type, str(exc)
        refusal = None if seq <= self._unsigned_through else self._signer.check(
            msg.headers, data, scope_allows=None if event is None else scope_allows(event)
        )  # fmt: skip
        if refusal is not None:  # acked: a forged or unsigned event is never redelivered
            self._metrics.policy_events.labels(kind, refusal).inc()
            msg_id = (msg.headers or {}).get("Nats-Msg-Id", "")[:200]
            if self._refusals.allow():
                log.warning("policy event at %s seq %d (Nats-Msg-Id %r) refused: %s",
                            msg.subject, seq, msg_id, REFUSED[refusal])  # fmt: skip
        elif problem is not None:
            self._metrics.policy_events.labels(kind, "invalid").inc()
            if self._refusals.allow():
                log.warning("policy event at %s seq %d refused: %s", msg.subject, seq, problem)
        else:
            assert event is not None
            await self._apply(msg, event, seq)
            return
        await msg.ack()
        self._last_seq = max(self._last_seq, seq)

    async def _apply(self, msg: Msg, event: PolicyEvent, seq: int) -> None:
        self.watch.begin(f"{msg.subject} seq {seq}")
        try:
            for handler in self._handlers:
                await handler(event)
        except Exception:  # a bug of ours: redelivery would hit it again; go on. Not counted
            # here: the handler (service.events.PolicyEvents.on_event) counts every event once
            log.exception("policy event %s (seq %d) failed in its handler", event.msg_id, seq)
            await msg.term()
        else:
            await msg.ack()
        finally:
            self.watch.end()
        self._last_seq = max(self._last_seq, seq)

    async def _decode(self, subject: str, data: bytes) -> PolicyEvent:
        """``decode_event`` (large bodies in a thread: the loop keeps serving meanwhile),
        plus the subject check."""
        if len(data) > DECODE_INLINE_BYTES:
            event = await asyncio.to_thread(decode_event, data)
        else:
            event = decode_event(data)
        if subject != self.subject(event.policy_id):
            raise UndecodableEvent(
                f"policy id {event.policy_id[:100]!r} does not match subject {subject!r}",
                event.type,
            )
        return event
