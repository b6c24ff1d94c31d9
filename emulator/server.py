"""The aiohttp application: ``build_app(settings) -> web.Application``.

Routes: ``GET /v3/ws`` (Universal Streaming v3), ``GET /v1/ws`` (Voice Agent), ``GET /v3/token``,
``GET /v1/token``, ``GET /v1/voices``, the ``/_emulator/...`` inspection and fault API
(``emulator.http_api``) and ``GET /healthz``.

One coroutine per connection (aiohttp's request task) drives a sans-I/O session machine:
``ws.receive(timeout=<next timer>)`` waits for a frame or the machine's next deadline
(heartbeat, inactivity, expiry, reply end, tool timeout) — no extra task per connection.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import WSMsgType, web

from emulator import http_api
from emulator.actions import Action, Close, Drop, Send
from emulator.agent import AgentConnection
from emulator.agent_conversation import session_error
from emulator.agent_session import AgentSession
from emulator.auth import TokenStore, agent_credential, streaming_credential
from emulator.faults import FaultSpec, FaultState
from emulator.inspection import Registry
from emulator.settings import EmulatorSettings
from emulator.streaming import StreamingSession, close_reason
from emulator.streaming_config import Rejection, parse_connect
from emulator.streaming_messages import error as error_message
from sessions.clock import Clock, SystemClock
from sessions.dialects import streaming_v3_table as sv3
from sessions.dialects import voice_agent_v1_table as va1

__all__ = ["STATE", "EmulatorState", "build_app"]

AGENT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # base64 JSON audio frames; no documented limit
_GOING_AWAY = 1001
STOPPED_POLL_S = 0.01  # how often a session that stopped reading looks whether to read on


@dataclass
class _Live:
    """A live socket and the machine behind it (for operator-injected closes)."""

    ws: web.WebSocketResponse
    request: web.Request
    machine: Any


class EmulatorState:
    """Everything the emulator knows; one per application (no module globals)."""

    def __init__(self, settings: EmulatorSettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.registry = Registry(clock, settings.max_closed_sessions, settings.faults)
        self.tokens = TokenStore(clock)
        self.agent_sessions: dict[str, AgentSession] = {}
        self.sockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
        self.live: dict[str, _Live] = {}  # session id -> its current socket
        self.connections: dict[AgentConnection, _Live] = {}

    # AgentDirectory
    def create(self, session: AgentSession) -> None:
        self.agent_sessions[session.id] = session
        self.registry.add(session.record)

    def find(self, session_id: str) -> AgentSession | None:
        return self.agent_sessions.get(session_id)

    def expire(self, session: AgentSession) -> None:
        session.state = "ended"
        self.agent_sessions.pop(session.id, None)
        record = session.record
        self.registry.close(record, record.close_code or 1006, "resume window expired", "client")

    def attach(self, session_id: str, connection: AgentConnection) -> None:
        live = self.connections.get(connection)
        if live is not None:
            self.live[session_id] = live

    async def close_session(self, session_id: str, code: int, reason: str) -> bool:
        """Server-side failure injection; False when the session has no live socket."""
        live = self.live.get(session_id)
        if live is None:
            return False
        outcome = await _execute(live.ws, live.request, live.machine.server_close(code, reason))
        return outcome is not None

    def reading(self, session_id: str, on: bool) -> None:
        """The session's socket stops reading at once (``on`` False: its ``stop_reading``
        fault; the frame its handler waits for does not come) or reads again."""
        live = self.live.get(session_id)
        protocol = None if live is None else live.request.protocol
        if protocol is None:
            return
        if on:
            protocol.resume_reading()
        else:
            protocol.pause_reading()

    def sweep(self) -> None:
        """Forget suspended voice-agent sessions whose resume window has passed."""
        now = self.clock.monotonic()
        for session in list(self.agent_sessions.values()):
            if session.state == "suspended" and not session.resumable(now):
                self.expire(session)

    def resume_owners(self) -> dict[str, str]:
        return {
            s.resume_token: s.owner for s in self.agent_sessions.values() if s.state == "suspended"
        }


STATE = web.AppKey("emulator_state", EmulatorState)


class _Machine(Protocol):
    closed: bool

    def next_deadline(self) -> float | None: ...

    def on_timer(self, now: float) -> list[Action]: ...

    def receive_text(self, text: str, now: float) -> list[Action]: ...

    def peer_closed(self, code: int | None) -> None: ...


@dataclass
class _Outcome:
    code: int | None
    reason: str
    by: str  # "server" | "client"


def _dumps(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


async def _execute(
    ws: web.WebSocketResponse, request: web.Request, actions: list[Action]
) -> _Outcome | None:
    """Run actions in order; an outcome once the connection is finished, else None.

    A peer that stops reading cannot stall the session forever: a send that does not complete
    within ``send_timeout_s`` aborts the connection.
    """
    send_timeout = request.app[STATE].settings.send_timeout_s
    for action in actions:
        if isinstance(action, Send):
            try:
                async with asyncio.timeout(send_timeout):
                    await ws.send_str(_dumps(action.payload))
            except ConnectionResetError:
                return _Outcome(None, "connection lost", "client")
            except TimeoutError:
                if request.transport is not None:
                    request.transport.abort()
                return _Outcome(None, "send timed out (peer not reading)", "server")
        elif isinstance(action, Close):
            await ws.close(code=action.code, message=action.reason.encode())
            return _Outcome(action.code, action.reason, "server")
        elif isinstance(action, Drop):
            if request.transport is not None:
                request.transport.abort()
            return _Outcome(None, "fault: drop_after_messages", "server")
    return None


async def _pump(
    ws: web.WebSocketResponse,
    request: web.Request,
    machine: _Machine,
    faults: FaultState | None,
    clock: Clock,
    audio: Any = None,
) -> _Outcome:
    """Feed frames and timers to ``machine`` until either side closes (nothing while the
    session's ``stop_reading`` fault holds)."""
    while True:
        knobs = faults or getattr(machine, "faults", None) or _NO_FAULTS
        if knobs.spec.stop_reading and not ws.closed:  # (closed: shutting down, read the end)
            await asyncio.sleep(STOPPED_POLL_S)
            continue
        now = clock.monotonic()
        deadline = machine.next_deadline()
        if deadline is not None and deadline <= now:
            outcome = await _execute(ws, request, machine.on_timer(now))
            if outcome is not None:
                return outcome
            continue
        timeout = None if deadline is None else max(deadline - now, 0.001)
        try:
            msg = await ws.receive(timeout=timeout)
        except TimeoutError:
            continue
        if msg.type is WSMsgType.TEXT:
            latency = knobs.latency_s
            if latency:
                await asyncio.sleep(latency)
            actions = machine.receive_text(msg.data, clock.monotonic())
        elif msg.type is WSMsgType.BINARY and audio is not None:
            actions = audio(msg.data, clock.monotonic())
        elif msg.type is WSMsgType.BINARY:
            actions = []
        elif msg.type is WSMsgType.ERROR:
            machine.peer_closed(ws.close_code)
            return _Outcome(ws.close_code, str(msg.data), "server")
        else:  # CLOSE / CLOSING / CLOSED
            machine.peer_closed(ws.close_code)
            return _Outcome(ws.close_code, "client closed", "client")
        outcome = await _execute(ws, request, actions)
        if outcome is not None:
            return outcome


_NO_FAULTS = FaultState(FaultSpec())


async def _open(request: web.Request, max_msg_size: int) -> web.WebSocketResponse:
    state = request.app[STATE]
    ws = web.WebSocketResponse(
        compress=state.settings.websocket_compression, max_msg_size=max_msg_size
    )
    await ws.prepare(request)
    state.sockets.add(ws)
    return ws


async def _handshake_delay(state: EmulatorState) -> None:
    """The ``handshake_delay_ms`` fault: a slow upgrade, before any session exists."""
    delay = state.registry.default_faults.handshake_delay_ms
    if delay > 0:
        await asyncio.sleep(delay / 1000.0)


def _connect_info(request: web.Request) -> dict[str, Any]:
    query = {k: v for k, v in request.query.items() if k != "token"}
    return {
        "query": query,
        "user_agent": request.headers.get("User-Agent"),
        "remote": request.remote,
    }


async def streaming_ws(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    s = state.settings
    stats = state.registry.stats
    query = {k: request.query[k] for k in request.query}
    credential = streaming_credential(request.headers, query, s, state.tokens)
    max_bytes = int(sv3.LIMITS["max_message_bytes"])
    if isinstance(credential, str):
        stats.inc(sv3.DIALECT, "connections_rejected")
        if s.auth_rejection == "http":
            return web.json_response({"error": credential}, status=401)
        ws = await _open(request, max_bytes)
        await ws.close(code=sv3.CLOSE["unauthorized"], message=credential.encode())
        return ws
    limit = s.max_concurrent_sessions
    if limit is not None and state.registry.current(sv3.DIALECT) >= limit:
        stats.inc(sv3.DIALECT, "connections_rejected")
        ws = await _open(request, max_bytes)
        reason = "Unauthorized Connection: Too many concurrent sessions"
        await ws.close(code=sv3.CLOSE["too_many_sessions"], message=reason.encode())
        return ws
    parsed = parse_connect(query, s)
    if isinstance(parsed, Rejection):
        stats.inc(sv3.DIALECT, "connections_rejected")
        if s.config_rejection == "http":
            return web.json_response({"error": parsed.message}, status=400)
        ws = await _open(request, max_bytes)
        if s.error_frame_before_close:
            await ws.send_str(_dumps(error_message(parsed.code, parsed.message)))
        await ws.close(code=parsed.code, message=close_reason(parsed.message).encode())
        return ws
    config, ignored = parsed
    await _handshake_delay(state)
    connect = _connect_info(request)
    connect["auth"] = credential.method
    session = StreamingSession(
        settings=s,
        clock=state.clock,
        stats=stats,
        config=config,
        ignored=ignored,
        connect=connect,
        api_version=request.headers.get("AssemblyAI-Version", sv3.API_VERSION),
        faults=state.registry.default_faults,
        session_cap_s=credential.session_cap_s,
    )
    state.registry.add(session.record)
    ws = await _open(request, max_bytes)
    state.live[session.id] = _Live(ws, request, session)
    outcome = _Outcome(None, "connection lost", "client")
    try:
        outcome = await _execute(ws, request, session.begin()) or await _pump(
            ws, request, session, session.record.faults, state.clock, session.receive_audio
        )
    finally:
        state.sockets.discard(ws)
        state.live.pop(session.id, None)
        record = session.record
        if session.closed_by == "server":
            server_code = record.close_code if record.close_code is not None else 1006
            state.registry.close(record, server_code, record.close_reason or "", "server")
        else:
            if outcome.code == sv3.CLOSE["too_big"]:
                stats.inc(sv3.DIALECT, "errors")
                record.counters["errors"] += 1
            code = outcome.code if outcome.code is not None else ws.close_code
            state.registry.close(record, code, outcome.reason, outcome.by)
    return ws


async def agent_ws(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    s = state.settings
    stats = state.registry.stats
    state.sweep()
    query = {k: request.query[k] for k in request.query}
    credential = agent_credential(request.headers, query, s, state.tokens, state.resume_owners())
    code_case = str.upper if s.agent_error_code_case == "upper" else str.lower
    if isinstance(credential, str):
        stats.inc(va1.DIALECT, "connections_rejected")
        if s.auth_rejection == "http":
            return web.json_response({"error": credential}, status=401)
        return await _refuse(request, session_error(code_case("unauthorized"), credential))
    limit = s.max_concurrent_sessions
    if limit is not None and state.registry.current(va1.DIALECT) >= limit:
        stats.inc(va1.DIALECT, "connections_rejected")
        return await _refuse(
            request, session_error("concurrency_exceeded", "Too many concurrent sessions")
        )
    await _handshake_delay(state)
    connect = _connect_info(request)
    connect["auth"] = credential.method
    conn = AgentConnection(
        settings=s,
        clock=state.clock,
        stats=stats,
        credential=credential,
        directory=state,
        connect=connect,
        default_faults=state.registry.default_faults,
    )
    ws = await _open(request, AGENT_MAX_MESSAGE_BYTES)
    state.connections[conn] = _Live(ws, request, conn)
    outcome = _Outcome(None, "connection lost", "client")
    try:
        outcome = await _pump(ws, request, conn, None, state.clock)
    finally:
        state.sockets.discard(ws)
        state.connections.pop(conn, None)
        session = conn.session
        if session is not None:
            live = state.live.get(session.id)
            if live is not None and live.machine is conn:
                del state.live[session.id]
            record = session.record
            if conn.ended:
                state.agent_sessions.pop(session.id, None)
                if conn.closed_by == "server":
                    code, reason, by = conn.close_code, conn.close_reason, "server"
                else:
                    code, reason, by = outcome.code, outcome.reason, outcome.by
                state.registry.close(record, code, reason or "session ended", by)
            else:
                code = outcome.code if outcome.code is not None else ws.close_code
                record.close_code = code if code is not None else 1006
                record.close_reason = outcome.reason or "connection lost"
                session.suspend(state.clock.monotonic())
    return ws


async def _refuse(request: web.Request, payload: dict[str, Any]) -> web.WebSocketResponse:
    payload["timestamp"] = request.app[STATE].clock.now()
    ws = await _open(request, AGENT_MAX_MESSAGE_BYTES)
    await ws.send_str(_dumps(payload))
    await ws.close(code=va1.CLOSE["policy"], message=str(payload["message"])[:120].encode())
    return ws


async def _on_shutdown(app: web.Application) -> None:
    for ws in list(app[STATE].sockets):
        await ws.close(code=_GOING_AWAY, message=b"emulator shutting down")


def build_app(
    settings: EmulatorSettings | None = None, clock: Clock | None = None
) -> web.Application:
    """The emulator as an aiohttp application (run it with ``web.AppRunner`` or ``run_app``)."""
    settings = settings or EmulatorSettings()
    app = web.Application()
    app[STATE] = EmulatorState(settings, clock or SystemClock())
    app.router.add_get("/v3/ws", streaming_ws)
    app.router.add_get("/v1/ws", agent_ws)
    http_api.add_routes(app.router, lambda request: request.app[STATE])
    app.on_shutdown.append(_on_shutdown)
    return app
