"""The gateway's pump: socket events into the proxy machine, its actions into writes and calls.

:class:`ProxyPump` relays one session (the model: ``emulator/server.py``'s ``_execute`` and
``_pump``): the client's frames and the upstream's go to :class:`~controlplane.edges.proxy
.ProxySession` (audio relayed untouched, without it), our pushes come in through
:class:`UpstreamTransport`, an acknowledgement deadline through one timer; each event's
actions are executed in order — writes to the two sockets, and the service's
``SessionPort`` calls. Time is the event loop's monotonic clock (the timer's own).

A text frame for the upstream is written at once, never waiting for the upstream to read
(``ProxyPump.to_upstream``: built here, masked, handed to the leg's transport, as the
control channel's raw path): aiohttp's ``send_str`` writes a frame and THEN waits for the
drain when the leg is paused past its writer limit, with no timeout, so one upstream that
stopped reading held up every later session of a fan-out (and a connection lost during that
wait was recorded ``rejected`` though the frame may have left). Flow control: a fan-out
writes inline only to a leg that is not congested (``UpstreamTransport.congested``); a
congested leg's pushes go to the session's worker, which waits for the leg to resume BEFORE
it writes, never after (given up meanwhile, nothing was sent: ``push.sending``); the
client's own frames wait for a paused leg after they are relayed (the client's relay only).
So a leg's unsent bytes stay under ``CONGESTED_BYTES`` plus one frame per writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from controlplane.edges.admission import FirstFrames, close_reason
from controlplane.edges.proxy import ProxySession
from controlplane.push.actions import (
    Acknowledge,
    Action,
    ClientChange,
    CloseClient,
    ConnectAnswer,
    Count,
    Kick,
    LateAnswer,
    Queued,
    Ready,
    Reconnect,
    Resumed,
    ToClient,
    ToUpstream,
    TurnBoundary,
    Written,
)
from controlplane.push.agent_acks import AgentAcks
from controlplane.push.live import CONGESTED_BYTES, LiveSession, write_buffer_size
from controlplane.push.protocol import Push
from controlplane.service.sessions import SessionPort
from sessions.dialects.streaming_v3_upstream import StreamingUpstream
from sessions.errors import DialectError

__all__ = [
    "INTERNAL_ERROR_CLOSE",
    "ProxyPump",
    "UpstreamTransport",
    "masked_text_frame",
    "send_upstream",
]

log = logging.getLogger(__name__)

INTERNAL_ERROR_CLOSE = 1011
DRAIN_POLL_S = 0.01  # how often a leaving session looks whether its answers came (and a
MAX_DRAIN_POLL_S = 0.1  # write waiting for a paused leg whether it resumed, backing off)


class UpstreamTransport:
    """Where the engine writes a gateway session's pushes (through its machine)."""

    __slots__ = ("acknowledging", "answers_connect", "handed", "link", "model", "pump", "ws")

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse | None,
        acknowledging: bool,
        model: StreamingUpstream | None = None,
        link: AgentAcks | None = None,
        *,
        answers_connect: bool = False,
    ) -> None:
        self.ws = ws  # None until the upstream is dialled (after the connect is durable)
        self.acknowledging = acknowledging
        self.model = model  # Streaming v3: what the upstream runs, frame by frame
        self.link = link  # Voice Agent: one update outstanding, answers attributed
        # the upstream answers the connect itself (a Voice Agent first session.update):
        # SessionPort.connect_answered logs it
        self.answers_connect = answers_connect
        self.pump: ProxyPump | None = None
        # the last push whose frame was handed to the socket (``write``): a write given up
        # after that (send timed out) may still reach the upstream (``push.sending``)
        self.handed: Push | None = None

    def congested(self) -> bool:
        return self.ws is not None and write_buffer_size(self.ws) > CONGESTED_BYTES

    async def write(self, push: Push, wire: dict[str, Any], text: str) -> None:
        pump = self.pump
        if self.ws is None or self.ws.closed or pump is None:
            raise ConnectionError("not sent: the upstream socket is closed")
        if pump.ls.worker is not None:
            # a worker's write (a fan-out writes inline only to a leg that is not congested):
            # it waits for the upstream to read BEFORE its frame goes; given up meanwhile
            # (send timed out), nothing was sent
            await pump.writable(CONGESTED_BYTES)
            if self.ws.closed:
                raise ConnectionError("not sent: the upstream socket is closed")
        machine = pump.machine
        actions = machine.push(push, wire, text, pump.now())
        goes = machine.acks is None or any(
            isinstance(a, Written) and a.push is push for a in actions
        )  # (Voice Agent: not queued behind another update)
        frames = pump.frames_out
        try:
            await pump.run(actions)
        finally:
            if goes and pump.frames_out > frames:
                # its frame was handed to the socket: whatever happens from here on (the
                # connection lost, the write given up), it may have reached the upstream
                self.handed = push


class ProxyPump:
    """Relays one gateway session until either side closes."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        upstream: aiohttp.ClientWebSocketResponse,
        ls: LiveSession,
        machine: ProxySession,
        port: SessionPort,
    ) -> None:
        self.ws = ws
        self.upstream = upstream
        self.ls = ls
        self.machine = machine
        self.port = port
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # the leg's asyncio transport and aiohttp protocol (the client socket's, for its life;
        # aiohttp has no public accessor: why it is pinned, pyproject.toml)
        writer = getattr(upstream, "_writer", None)
        self._leg: asyncio.WriteTransport | None = getattr(writer, "transport", None)
        self._leg_protocol: Any = getattr(writer, "protocol", None)
        self.frames_out = 0  # text frames handed to the upstream leg (``to_upstream``)

    def now(self) -> float:
        return self._loop.time()

    async def run(self, actions: list[Action]) -> None:
        """Execute ``actions`` in order, then re-arm the machine's timer."""
        ls, port = self.ls, self.port
        for action in actions:
            if isinstance(action, ToUpstream):
                self.to_upstream(action.text)
            elif isinstance(action, ToClient):
                if not action.quiet:
                    await self.ws.send_str(action.text)
                    continue
                with contextlib.suppress(Exception):
                    await self.ws.send_str(action.text)
            elif isinstance(action, ClientChange):
                await port.client_update(ls, action.update)
            elif isinstance(action, Acknowledge):
                await port.acknowledge(ls, action.ack)
            elif isinstance(action, ConnectAnswer):
                port.connect_answered(ls, action.ack, action.refs, action.version,
                                      late=action.late)  # fmt: skip
            elif isinstance(action, LateAnswer):
                await port.late_answer(ls, action.push, action.ack)
            elif isinstance(action, Resumed):
                await port.resumed(ls, action.config)
            elif isinstance(action, Reconnect):
                try:
                    first: Any = port.reconnect(ls, action.message)
                except DialectError as exc:
                    first = str(exc)
                await self.run(self.machine.reconnected(first, self.now()))
            elif isinstance(action, Written):
                port.written(ls, action.push)
            elif isinstance(action, Queued):
                port.queued(ls, action.push)
            elif isinstance(action, Ready):
                port.ready(ls, action.upstream_id)
            elif isinstance(action, Kick):
                await port.kick(ls)
            elif isinstance(action, TurnBoundary):
                await port.turn_boundary(ls)
            elif isinstance(action, Count):
                port.count(ls, action.reason)
            elif isinstance(action, CloseClient):
                with contextlib.suppress(Exception):
                    await self.ws.close(code=action.code, message=close_reason(action.reason))
        if self.machine.acks is not None:
            self._arm()

    def to_upstream(self, text: str) -> None:
        """One text frame for the upstream, handed to the leg's transport at once: never
        waiting for the upstream to read (module docstring). Raises ``ConnectionError`` when
        the leg is closed: then no byte of it was written."""
        leg = self._leg
        if self.upstream.closed or leg is None or leg.is_closing():
            raise ConnectionError("not sent: the upstream connection is closed")
        leg.write(masked_text_frame(text.encode()))
        self.frames_out += 1

    async def writable(self, limit: int = 0) -> None:
        """Wait while the leg's transport is paused (its unsent bytes past asyncio's
        high-water mark) and holds more than ``limit`` bytes: until the upstream read enough
        (the transport resumed), or the connection is lost. Polled (public state only):
        aiohttp's drain waiter is one future per connection, and a waiter cancelled on it (a
        worker's write given up) cancelled every other one (the client's relay)."""
        leg, protocol = self._leg, self._leg_protocol
        if leg is None or protocol is None:
            return
        pause = DRAIN_POLL_S
        while protocol.writing_paused and not leg.is_closing():
            if leg.get_write_buffer_size() <= limit:
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_DRAIN_POLL_S)

    async def relay(self, frames: FirstFrames) -> str:
        """Relays until either side closes; the session's end cause. ``frames``: the client's
        (on ``/v3/ws`` the first, audio included, must come within the first-message
        timeout)."""
        ws, upstream = self.ws, self.upstream
        cause = "client_closed"
        if self.machine.acks is not None:
            self._arm()  # the connect's answer is timed from now on, whatever comes first
        reader = self._loop.create_task(
            self._from_upstream(), name=f"gateway-upstream-{self.ls.session.id}"
        )
        try:
            async for msg in frames:
                if msg.type == WSMsgType.BINARY:
                    await upstream.send_bytes(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    await self.run(self.machine.client_text(msg.data, self.now()))
                    await self.writable()  # the client's frames wait for a slow upstream
            if frames.silent:
                cause = "first_message_timeout"
            elif reader.done():
                cause = "upstream_closed"
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            cause = f"proxy_error: {type(exc).__name__}"
        except Exception:  # a bug of ours: end this session, keep serving the others
            cause = "internal_error"
            log.exception("gateway session %s failed; closing it", self.ls.session.id)
            with contextlib.suppress(Exception):
                await ws.close(code=INTERNAL_ERROR_CLOSE, message=b"internal error")
        finally:
            if not upstream.closed:
                await self._drain(reader)
            if not upstream.closed:
                code = ws.close_code if ws.close_code and ws.close_code != 1006 else 1000
                with contextlib.suppress(Exception):
                    await upstream.close(code=code)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            await self.close()
            if reader.done() and not reader.cancelled() and cause == "client_closed":
                cause = "upstream_closed"
        return cause

    async def _drain(self, reader: asyncio.Task[None]) -> None:
        """The client left while an update of the session waits for its answer (Voice Agent:
        ours, or the client's own, possibly applied upstream already): the upstream leg stays
        open until the answers came, at most one acknowledgement timeout, so that the record
        says what the upstream did rather than "the session ended before it answered"."""
        acks = self.machine.acks
        if acks is None:
            return
        acks.leaving = True  # what waits in the queue is not sent any more
        model, limit = acks.model, self.now() + acks.ack_timeout
        while (model.outstanding is not None or model.owed) and self.now() < limit:
            if reader.done():  # the upstream closed: no answer can come
                return
            await asyncio.sleep(DRAIN_POLL_S)

    async def _from_upstream(self) -> None:
        ws, upstream = self.ws, self.upstream
        close_code, close_reason_ = 1011, "upstream connection lost"
        try:
            while True:
                msg = await upstream.receive()
                if msg.type == WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
                    continue
                if msg.type == WSMsgType.CLOSE:
                    close_code, close_reason_ = int(msg.data), str(msg.extra or "")
                    break
                if msg.type != WSMsgType.TEXT:
                    break
                await self.run(self.machine.upstream_text(msg.data, self.now()))
        except (ConnectionError, aiohttp.ClientError, RuntimeError):
            pass
        except Exception:  # a bug of ours: logged; the client sees 1011
            log.exception("gateway session %s: upstream message handling failed",
                          self.ls.session.id)  # fmt: skip
            close_code, close_reason_ = INTERNAL_ERROR_CLOSE, "internal error"
        finally:
            if not upstream.closed:
                with contextlib.suppress(Exception):
                    await upstream.close()
            if not ws.closed:
                code = close_code if close_code not in (1005, 1006) else 1011
                with contextlib.suppress(Exception):
                    await ws.close(code=code, message=close_reason(close_reason_))

    # -- the machine's timer -----------------------------------------------------------------
    def _arm(self) -> None:
        deadline = self.machine.next_deadline()
        if deadline == self._deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadline = deadline
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer, self._deadline = None, None
        task = self._loop.create_task(self._on_timer(), name="gateway-agent-expiry")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_timer(self) -> None:
        try:
            await self.run(self.machine.on_timer(self.now()))
        except (ConnectionError, aiohttp.ClientError, RuntimeError):
            pass  # the socket is gone: the relay ends the session
        except Exception:  # a bug of ours: logged; the relay goes on
            log.exception("gateway session %s: timer handling failed", self.ls.session.id)

    async def close(self) -> None:
        """The session ended: what the machine still holds is settled; its timer and tasks
        are cancelled."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with contextlib.suppress(Exception):  # the port logs and counts a failure
            await self.run(self.machine.close())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


_LEN7 = struct.Struct("!BB").pack
_LEN16 = struct.Struct("!BBH").pack
_LEN64 = struct.Struct("!BBQ").pack
_MASK = random.Random()  # (aiohttp's choice for a client's masking keys)
_XOR = [bytes(a ^ b for a in range(256)) for b in range(256)]  # _XOR[k][a] == a ^ k


def masked_text_frame(payload: bytes) -> bytes:
    """One final, uncompressed WebSocket text frame of ``payload`` from a client: masked with
    a fresh key (RFC 6455 §5.3). The gateway's upstream legs never negotiate compression."""
    n = len(payload)
    if n < 126:
        header = _LEN7(0x81, 0x80 | n)
    elif n < 65536:
        header = _LEN16(0x81, 0x80 | 126, n)
    else:
        header = _LEN64(0x81, 0x80 | 127, n)
    key = _MASK.getrandbits(32).to_bytes(4, "little")
    body = bytearray(payload)
    for i in range(4):  # byte i of every 4 XOR key[i] (a translation table per key byte)
        body[i::4] = body[i::4].translate(_XOR[key[i]])
    return b"".join((header, key, body))


async def send_upstream(upstream: aiohttp.ClientWebSocketResponse, actions: list[Action]) -> None:
    """Before a session is attached (its first message): the frames for the upstream."""
    for action in actions:
        assert isinstance(action, ToUpstream), action
        await upstream.send_str(action.text)
