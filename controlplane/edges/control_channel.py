"""Control channel ``GET /v1/control``: for apps that keep their own upstream socket.

One session per socket. JSON text frames (documented in docs/control-channel.md):

app → control plane
  ``{"type": "register", "session_id"?, "kind", "model", "labels"?, "config"?}``  (first)
  ``{"type": "applied", "version": N}`` / ``{"type": "failed", "version": N, "error": "...",
  "fields"?: [canonical field, ...]}`` (the fields the upstream refused; else all of them)
  ``{"type": "update", "config": {canonical delta}}``  the app's own change; locked fields refused
  ``{"type": "turn_boundary"}``                        releases ``next_turn`` pushes
  ``{"type": "heartbeat"}``
control plane → app
  ``{"type": "registered", "session_id", "version", "effective_config", "locks"}``
  ``{"type": "push", "session_id", "version", "message": {wire message}}``
  ``{"type": "update_result", "accepted": [...], "rejected": {field: reason}}``
  ``{"type": "heartbeat", "at": <unix s>}``
  ``{"type": "error", "code", "message"}``  (the socket stays open unless registration failed)
  (``rate_limited``: an ``update`` over the session's rate, dropped and not logged;
  docs/reliability.md#connection-limits)

Frames are held to the REST body rules (``controlplane.api.inputs.parse_frame``): no duplicate
keys, ``NaN`` or lone surrogates, at most 32 levels; a frame that breaks them gets an ``error``.
Close codes: 1008 registration refused, or no ``register`` within the first-message timeout
(``error`` ``register_timeout`` first); 1009 a frame over 256 KiB; 1011 an unexpected failure
of ours (logged with the session id; the session ends, the process carries on).

Authenticated with a bearer token (``Authorization`` header or ``?token=``) whose role may
register and report sessions: ``app`` or higher (controlplane.roles); a ``viewer`` token is
refused with 403 before the upgrade. A token revoked (or demoted below ``app``) while its
connections are open ends them within ``TOKEN_RECHECK_S``: ``error`` ``token_revoked``, then
close 1008. A report (``applied``, ``failed``, ``update``,
``turn_boundary``) is always about the session this connection registered; one naming another
``session_id`` gets an ``error`` (``not_your_session``) and changes nothing.
Streaming-v3 sessions report ``applied`` when they wrote the message to their upstream; since
Streaming v3 has no acknowledgement such pushes end ``unverified``, never ``acked``.

This module does the handshake (authentication, ``register``, ``registered``); each frame
after it goes to the session's machine (``controlplane.edges.control_session``), whose
actions are executed here in order: frames to the app, reports to
``controlplane.service.sessions``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Final

from aiohttp import WSMsgType, web

from controlplane.api.auth import TOKENS, TokenStore, authenticate_for
from controlplane.edges.admission import (
    FIRST_MESSAGE_CLOSE,
    ConnectionSlots,
    UpdateRates,
    close_reason,
    first_frame,
)
from controlplane.edges.control_session import (
    ControlSession,
    ProtocolError,
    decode,
    error_frame,
    registration,
)
from controlplane.edges.control_transport import ControlTransport
from controlplane.errors import ControlPlaneError, Forbidden
from controlplane.push.actions import (
    Acknowledge,
    Action,
    ClientChange,
    Count,
    LateAnswer,
    ToClient,
    TurnBoundary,
)
from controlplane.push.live import LiveSession
from controlplane.roles import Role
from controlplane.service.plane import ControlPlane
from controlplane.service.sessions import EngineSessions, SessionPort
from controlplane.tasks import stop_task
from policies.fields import to_json
from sessions.dialects import dialect_for

__all__ = ["ControlChannel", "ControlTransport"]

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 256 * 1024
INTERNAL_ERROR_CLOSE = 1011
REGISTER_ROLE = Role.APP  # the lowest role that may register and report sessions
TOKEN_RECHECK_S: Final = 2.0  # open connections' tokens checked again (the store's re-read)


class ControlChannel:
    def __init__(self, service: ControlPlane, slots: ConnectionSlots | None = None) -> None:
        self.service = service
        self.connections: set[web.WebSocketResponse] = set()
        settings = service.settings
        self.slots = slots or ConnectionSlots(settings.max_connections)
        self.update_rates = UpdateRates(
            service.clock, burst=settings.client_update_burst,
            rate_per_s=settings.client_update_rate_per_s,
        )  # fmt: skip
        self.sessions: SessionPort = EngineSessions.of(service)
        # open connections by their token's digest: a revoked token ends its connections
        self._by_token: dict[bytes, set[web.WebSocketResponse]] = {}
        # an attached session's transport: every data frame to its app goes through it (a
        # compressed socket's one compressor: ``ControlTransport``)
        self._transports: dict[web.WebSocketResponse, ControlTransport] = {}
        self._token_watch: asyncio.Task[None] | None = None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/control", self.slots.guard(self.handle))

        async def stop_token_watch(_: web.Application) -> None:
            task, self._token_watch = self._token_watch, None
            await stop_task(task)

        app.on_cleanup.append(stop_token_watch)

    async def _watch_tokens(self, tokens: TokenStore) -> None:
        """Every ``TOKEN_RECHECK_S``: close the connections whose token is revoked or below
        ``REGISTER_ROLE`` now (one check per distinct token, not per connection)."""
        while True:
            await asyncio.sleep(TOKEN_RECHECK_S)
            for digest, sockets in list(self._by_token.items()):
                role = tokens.role_now(digest)
                if role is not None and role >= REGISTER_ROLE:
                    continue
                log.warning("closing %d control channel connection(s): their token is revoked "
                            "or below role %s now", len(sockets), REGISTER_ROLE)  # fmt: skip
                await asyncio.gather(
                    *(_revoke(ws, self._transports.get(ws)) for ws in list(sockets))
                )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization")
        if header is None and "token" in request.query:
            header = "Bearer " + request.query["token"]
        principal = authenticate_for(request, header, REGISTER_ROLE)  # Unauthorized (401)
        if principal.role < REGISTER_ROLE:
            raise Forbidden(
                f"the control channel requires role {REGISTER_ROLE.label} or higher to register "
                f"and report sessions; this token has role {principal.role.label}",
                details={"required_role": REGISTER_ROLE.label, "role": principal.role.label},
            )
        if self.service.draining:
            raise ControlPlaneError("shutting down", code="draining")
        ws = web.WebSocketResponse(
            compress=self.service.settings.websocket_compression,
            max_msg_size=MAX_FRAME_BYTES,
            heartbeat=None,
        )
        await ws.prepare(request)
        self.connections.add(ws)
        self._by_token.setdefault(principal.digest, set()).add(ws)
        if self._token_watch is None or self._token_watch.done():
            tokens = request.config_dict[TOKENS]
            self._token_watch = asyncio.get_running_loop().create_task(
                self._watch_tokens(tokens), name="control-token-watch"
            )
        ls: LiveSession | None = None
        try:
            ls = await self._register(request, ws, principal.app)
            if ls is None:
                return ws
            if isinstance(ls.transport, ControlTransport):
                self._transports[ws] = ls.transport
            await self._welcome(ws, ls)
            machine = ControlSession(ls, self.update_rates)
            clock = self.service.clock
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    await self._run(ws, ls, machine.not_text())
                    continue
                await self._run(ws, ls, machine.text(msg.data, clock.now()))
        except Exception:  # a bug of ours: end this session, keep serving the others
            sid = ls.session.id if ls is not None else None
            log.exception("control channel failed (session %s); closing it", sid)
            with contextlib.suppress(Exception):
                await ws.close(code=INTERNAL_ERROR_CLOSE, message=b"internal error")
        finally:
            self.connections.discard(ws)
            self._transports.pop(ws, None)
            same_token = self._by_token.get(principal.digest)
            if same_token is not None:
                same_token.discard(ws)
                if not same_token:
                    del self._by_token[principal.digest]
            if ls is not None:
                self.update_rates.forget(ls.session.id)
                await self.service.detach(ls, "control_closed")
        return ws

    async def _register(
        self, request: web.Request, ws: web.WebSocketResponse, app: str
    ) -> LiveSession | None:
        """The attached session, or None when registration was refused (closed with 1008, or
        by aiohttp with 1009 for an oversize frame). ``app``: the token's app identity, recorded
        as the session's ``registered_by`` (an id keeps it: docs/security.md#teams)."""
        timeout = self.service.settings.first_message_timeout_s
        msg = await first_frame(ws, timeout, close_code=FIRST_MESSAGE_CLOSE, error=json.dumps(
            {"type": "error", "code": "register_timeout",
             "message": f"no register message within {timeout:g}s"}))  # fmt: skip
        if msg is None:
            return None
        if msg.type != WSMsgType.TEXT:
            if not ws.closed:
                await ws.close(code=1008, message=b"first frame must be a register message")
            return None
        try:
            raw = decode(msg.data)
            if raw.get("type") != "register":
                raise ProtocolError("register_first", "the first message must be register")
            kind, model, labels, config, session_id = registration(raw)
            session, effective = self.service.new_session(
                kind=kind, model=model, labels=labels, client_config=config,
                session_id=session_id, registered_by=app,
            )  # fmt: skip
            transport = ControlTransport(ws, session.id, request)
            ls = await self.service.attach(
                session, effective, transport=transport, dialect=dialect_for(kind),
                running=config, connect_wire=None, chosen_id=session_id is not None,
            )  # fmt: skip
        except ProtocolError as exc:
            await _send_error(ws, exc.code, exc.message)
            await ws.close(code=1008, message=close_reason(exc.message))
            return None
        except ControlPlaneError as exc:
            await _send_error(ws, exc.code, exc.message)
            await ws.close(code=1008, message=close_reason(exc.message))
            return None
        return ls

    async def _welcome(self, ws: web.WebSocketResponse, ls: LiveSession) -> None:
        """``registered``, then the first push when the app's config is not the effective one."""
        session = ls.session
        transport = ls.transport
        send = transport.answer if isinstance(transport, ControlTransport) else ws.send_str
        await send(json.dumps({
            "type": "registered", "session_id": session.id, "version": ls.push.desired_version,
            "effective_config": to_json(session.effective_config),
            "locks": {f: r.as_dict() for f, r in ls.locks.items()},
        }))  # fmt: skip
        self.sessions.ready(ls, None)
        await self.sessions.kick(ls)

    async def _run(self, ws: web.WebSocketResponse, ls: LiveSession, actions: list[Action]) -> None:
        """Execute the machine's actions in order: frames to the app, reports to the port."""
        port = self.sessions
        transport = ls.transport
        send = transport.answer if isinstance(transport, ControlTransport) else ws.send_str
        for action in actions:
            if isinstance(action, ToClient):
                if not action.quiet:
                    await send(action.text)
                    continue
                with contextlib.suppress(Exception):
                    await send(action.text)
            elif isinstance(action, Acknowledge):
                await port.acknowledge(ls, action.ack)
            elif isinstance(action, LateAnswer):
                await port.late_answer(ls, action.push, action.ack)
            elif isinstance(action, ClientChange):
                await port.client_update(ls, action.update)
            elif isinstance(action, TurnBoundary):
                await port.turn_boundary(ls)
            elif isinstance(action, Count):
                port.count(ls, action.reason)


async def _revoke(ws: web.WebSocketResponse, transport: ControlTransport | None) -> None:
    code = "token_revoked"
    message = ("this connection's token was revoked (or no longer has role "
               f"{REGISTER_ROLE.label}); reconnect with a valid token")  # fmt: skip
    if transport is None:
        await _send_error(ws, code, message)
    else:  # (a compressed socket: its transport's compressor, never aiohttp's)
        with contextlib.suppress(Exception):
            await transport.answer(error_frame(code, message))
    with contextlib.suppress(Exception):
        await ws.close(code=1008, message=b"token revoked")


async def _send_error(ws: web.WebSocketResponse, code: str, message: str) -> None:
    with contextlib.suppress(Exception):
        await ws.send_str(error_frame(code, message))
