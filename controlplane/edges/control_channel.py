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
refused with 403 before the upgrade. A report (``applied``, ``failed``, ``update``,
``turn_boundary``) is always about the session this connection registered; one naming another
``session_id`` gets an ``error`` (``not_your_session``) and changes nothing.
Streaming-v3 sessions report ``applied`` when they wrote the message to their upstream; since
Streaming v3 has no acknowledgement such pushes end ``unverified``, never ``acked``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from typing import Any

from aiohttp import WSMsgType, web

from controlplane.api.auth import TOKENS
from controlplane.api.inputs import parse_frame
from controlplane.edges.admission import (
    FIRST_MESSAGE_CLOSE,
    ConnectionSlots,
    UpdateRates,
    first_frame,
    refuse_over_rate,
)
from controlplane.errors import ControlPlaneError, Forbidden
from controlplane.labels import MAX_LABELS
from controlplane.push.acks import ClientRefusal, ClientUpdate, PushAck, PushApplied, PushRejected
from controlplane.push.live import CONGESTED_BYTES, LiveSession, write_buffer_size
from controlplane.push.protocol import Push
from controlplane.roles import Role
from controlplane.service.plane import ControlPlane
from controlplane.service.sessions import EngineSessions, SessionPort
from policies.errors import PolicyValidationError
from policies.fields import FIELD_NAMES, Config, Delta, check_value, to_json
from sessions.dialects import dialect_for
from sessions.model import SESSION_KINDS

__all__ = ["ControlChannel", "ControlTransport", "close_reason"]

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 256 * 1024
ID_MAX = 128
INTERNAL_ERROR_CLOSE = 1011
REGISTER_ROLE = Role.APP  # the lowest role that may register and report sessions
# what the REST API can address: no whitespace, '/' or control characters (docs/api.md)
_SESSION_ID = re.compile(rf"[^\s/\x00-\x1f\x7f]{{1,{ID_MAX}}}")


class ProtocolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ControlTransport:
    __slots__ = ("_prefix", "ws")
    acknowledging = True
    runs_at_connect = True  # the app already runs the config it registered with (exposures)

    def __init__(self, ws: web.WebSocketResponse, session_id: str) -> None:
        self.ws = ws
        self._prefix = '{"type":"push","session_id":' + json.dumps(session_id) + ',"version":'

    def congested(self) -> bool:
        return write_buffer_size(self.ws) > CONGESTED_BYTES

    async def write(self, push: Push, wire: dict[str, Any], text: str) -> None:
        if self.ws.closed:
            raise ConnectionError("control channel is closed")
        await self.ws.send_str(f'{self._prefix}{push.version},"message":{text}}}')


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

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/control", self.slots.guard(self.handle))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization")
        if header is None and "token" in request.query:
            header = "Bearer " + request.query["token"]
        principal = request.config_dict[TOKENS].authenticate(header)  # Unauthorized (401)
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
        ls: LiveSession | None = None
        try:
            ls = await self._register(ws)
            if ls is None:
                return ws
            await self._welcome(ws, ls)
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    await _send_error(ws, "invalid_frame", "only JSON text frames are accepted")
                    continue
                try:
                    await self._on_message(ws, ls, msg.data)
                except ProtocolError as exc:
                    await _send_error(ws, exc.code, exc.message)
        except Exception:  # a bug of ours: end this session, keep serving the others
            sid = ls.session.id if ls is not None else None
            log.exception("control channel failed (session %s); closing it", sid)
            with contextlib.suppress(Exception):
                await ws.close(code=INTERNAL_ERROR_CLOSE, message=b"internal error")
        finally:
            self.connections.discard(ws)
            if ls is not None:
                self.update_rates.forget(ls.session.id)
                await self.service.detach(ls, "control_closed")
        return ws

    async def _register(self, ws: web.WebSocketResponse) -> LiveSession | None:
        """The attached session, or None when registration was refused (closed with 1008, or
        by aiohttp with 1009 for an oversize frame)."""
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
            raw = _decode(msg.data)
            if raw.get("type") != "register":
                raise ProtocolError("register_first", "the first message must be register")
            kind, model, labels, config, session_id = _registration(raw)
            session, effective = self.service.new_session(
                kind=kind, model=model, labels=labels, client_config=config,
                session_id=session_id,
            )  # fmt: skip
            transport = ControlTransport(ws, session.id)
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
        await ws.send_str(json.dumps({
            "type": "registered", "session_id": session.id, "version": ls.push.desired_version,
            "effective_config": to_json(session.effective_config),
            "locks": {f: r.as_dict() for f, r in ls.locks.items()},
        }))  # fmt: skip
        self.sessions.ready(ls, None)
        await self.sessions.kick(ls)

    async def _on_message(self, ws: web.WebSocketResponse, ls: LiveSession, data: str) -> None:
        raw = _decode(data)
        kind = raw.get("type")
        named = raw.get("session_id")
        if named is not None and named != ls.session.id:
            raise ProtocolError(
                "not_your_session",
                "this connection registered session "
                f"{ls.session.id!r}; it may report only about that session",
            )
        if kind == "heartbeat":
            await ws.send_str(json.dumps({"type": "heartbeat", "at": self.service.clock.now()}))
        elif kind in ("applied", "failed"):
            version = raw.get("version")
            if isinstance(version, bool) or not isinstance(version, int):
                raise ProtocolError("bad_version", f"{kind}.version must be an integer")
            in_flight = ls.push.in_flight
            if in_flight is None or in_flight.version != version:
                raise ProtocolError(
                    "unknown_version", f"version {version} is not awaiting a report"
                )
            ack: PushAck
            if kind == "applied":
                ack = PushApplied("acked" if ls.session.kind == "voice-agent-v1" else "unverified")
            else:
                error = str(raw.get("error", "failed"))[:500]
                ack = PushRejected("app_failed", error, _refused_fields(raw.get("fields")))
            await self.sessions.acknowledge(ls, ack)
        elif kind == "turn_boundary":
            await self.sessions.turn_boundary(ls)
        elif kind == "update":
            await self._client_update(ws, ls, raw.get("config"))
        else:
            raise ProtocolError("unknown_type", f"unknown message type {kind!r}")

    async def _client_update(self, ws: web.WebSocketResponse, ls: LiveSession, raw: Any) -> None:
        if not isinstance(raw, dict):
            raise ProtocolError("bad_config", "update.config must be an object")
        if not self.update_rates.allow(ls.session.id):  # dropped, not logged
            self.service.metrics.rejects.labels(ls.session.kind, "rate_limited").inc()
            problem = self.update_rates.problem()
            error = json.dumps({"type": "error", "code": "rate_limited", "message": problem})
            await refuse_over_rate(ws, problem, error_frame=error)
            return
        delta: Delta = {}
        rejected: dict[str, str] = {}
        for name, value in raw.items():
            if name in ls.locks:
                ref = ls.locks[name]
                rejected[name] = f"locked by policy {ref.id} v{ref.version}"
                continue
            if value is None:
                delta[name] = None
                continue
            normalised, problems = check_value(name, value, f"config.{name}")
            if problems:
                rejected[name] = problems[0].message
            else:
                delta[name] = normalised
        wire = {"type": "update", "config": raw}
        refusal = None
        if rejected:
            locked = {k: raw[k] for k in rejected if k in raw and k in ls.locks}
            error = "; ".join(f"{k}: {v}" for k, v in rejected.items())
            refusal = ClientRefusal(locked, wire, error, counted=None)
        await self.sessions.client_update(ls, ClientUpdate("sent", delta, wire, refusal=refusal))
        await ws.send_str(json.dumps(
            {"type": "update_result", "accepted": sorted(delta), "rejected": rejected}
        ))  # fmt: skip


def _decode(data: str) -> dict[str, Any]:
    try:
        raw = parse_frame(data)
    except ValueError as exc:
        raise ProtocolError("bad_json", str(exc)) from None
    if not isinstance(raw, dict):
        raise ProtocolError("bad_message", "a message must be a JSON object")
    return raw


def _registration(raw: dict[str, Any]) -> tuple[str, str, dict[str, str], Config, str | None]:
    kind = raw.get("kind")
    if kind not in SESSION_KINDS:
        raise ProtocolError("bad_kind", f"kind must be one of {', '.join(SESSION_KINDS)}")
    model = raw.get("model")
    if not isinstance(model, str) or not model or len(model) > ID_MAX:
        raise ProtocolError("bad_model", f"model must be a non-empty string ≤ {ID_MAX} chars")
    session_id = raw.get("session_id")
    if session_id is not None and (
        not isinstance(session_id, str) or not _SESSION_ID.fullmatch(session_id)
    ):
        raise ProtocolError(
            "bad_session_id",
            f"session_id must be 1-{ID_MAX} characters without whitespace, '/' or control "
            "characters",
        )
    labels = raw.get("labels") or {}
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and len(k) <= 63 and len(v) <= 256
        for k, v in labels.items()
    ):
        raise ProtocolError("bad_labels", "labels must map strings (≤63) to strings (≤256)")
    if len(labels) > MAX_LABELS:  # as on the gateway
        raise ProtocolError("bad_labels", f"{len(labels)} labels, limit is {MAX_LABELS}")
    config_raw = raw.get("config") or {}
    if not isinstance(config_raw, dict):
        raise ProtocolError("bad_config", "config must be an object of canonical fields")
    config: Config = {}
    for name, value in config_raw.items():
        normalised, problems = check_value(name, value, f"config.{name}")
        if problems:
            raise ProtocolError("bad_config", str(PolicyValidationError(problems)))
        config[name] = normalised
    return kind, model, dict(labels), config, session_id


def close_reason(text: str) -> bytes:
    """A close frame's reason: at most 120 bytes of UTF-8, cut at a character boundary."""
    return text.encode("utf-8", "replace")[:120].decode("utf-8", "ignore").encode("utf-8")


async def _send_error(ws: web.WebSocketResponse, code: str, message: str) -> None:
    with contextlib.suppress(Exception):
        await ws.send_str(json.dumps({"type": "error", "code": code, "message": message}))


def _refused_fields(raw: Any) -> frozenset[str] | None:
    """``failed.fields``: the canonical fields the app's upstream refused (quarantined for
    the session); absent or empty: every field of the push."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(f, str) for f in raw):
        raise ProtocolError("bad_fields", "failed.fields must be a list of canonical field names")
    unknown = sorted(set(raw) - FIELD_NAMES)
    if unknown:
        raise ProtocolError(
            "bad_fields",
            f"failed.fields: unknown field(s) {', '.join(unknown)[:200]} (known: "
            f"{', '.join(sorted(FIELD_NAMES))})",
        )
    return frozenset(raw) or None
