"""Gateway: ``GET /v3/ws`` and ``GET /v1/ws`` proxied to the configured upstream.

Wire-compatible (official SDKs only change the host). This module does the handshakes: the
connection's labels, the session registered on connect and started on its effective
configuration (late joiners: policy fields merged into the streaming connect query or the
agent's first ``session.update``), the upstream leg opened with the client's credentials
(forwarded, never logged). Then each session is one sans-I/O machine
(``controlplane.edges.proxy``: client frames, upstream frames, pushes and deadlines in,
actions out) under a thin pump (``controlplane.edges.gateway_pump``: audio relayed untouched,
actions executed in order, what happens reported through ``controlplane.service.sessions``).
An unexpected failure of ours closes that session with 1011 and is logged; the gateway
carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import WSMsgType, web

from controlplane.api.inputs import parse_frame
from controlplane.edges.admission import (
    FIRST_MESSAGE_CLOSE,
    ConnectionSlots,
    FirstFrames,
    UpdateRates,
    close_reason,
    first_frame,
    streaming_silence_error,
)
from controlplane.edges.gateway_pump import (
    INTERNAL_ERROR_CLOSE,
    ProxyPump,
    UpstreamTransport,
    send_upstream,
)
from controlplane.edges.proxy import ProxySession, agent_error
from controlplane.errors import ControlPlaneError, Unavailable
from controlplane.labels import (
    CredentialLabels,
    LabelConflict,
    LabelsUnavailable,
    MemoryTokenLabels,
    TokenLabelStore,
    credential_of,
    merge_labels,
    parse_labels,
    parse_path_labels,
)
from controlplane.push.agent_acks import AgentAcks
from controlplane.push.live import LiveSession
from controlplane.service.live import NOT_CONNECTED
from controlplane.service.plane import ControlPlane
from controlplane.service.sessions import EngineSessions, SessionPort
from policies.fields import Config
from sessions.dialects.streaming_v3 import STREAMING_V3
from sessions.dialects.streaming_v3_table import CLOSE as STREAMING_CLOSE
from sessions.dialects.streaming_v3_upstream import StreamingUpstream
from sessions.dialects.voice_agent_v1 import VOICE_AGENT_V1
from sessions.errors import DialectError

__all__ = ["Gateway", "UpstreamTransport", "parse_labels", "unreachable"]

log = logging.getLogger(__name__)

FORWARDED_HEADERS = ("Authorization", "AssemblyAI-Version", "User-Agent")
LABELS_HEADER = "X-Session-Labels"
LABELS_QUERY = "cp_labels"  # for browser clients that cannot set headers; never forwarded
SECRET_QUERY = frozenset({"token"})
_QUERY = re.compile(r"\?[^\s'\"<>()\[\]]*")  # a URL's query in an error's text
_USERINFO = re.compile(r"//[^/@\s'\"]*@")  # ... and its user:password
NOT_RECORDED = "version_log_unwritable"  # the end cause of a connect refused before the dial


class Gateway:
    def __init__(
        self,
        service: ControlPlane,
        http: aiohttp.ClientSession | None,
        slots: ConnectionSlots | None = None,
        token_labels: TokenLabelStore | None = None,
    ) -> None:
        self.service = service
        self.settings = service.settings
        self.http = http
        self.connections: set[web.WebSocketResponse] = set()
        self.credential_labels = CredentialLabels(
            self.settings.credential_labels_file,
            token_labels or MemoryTokenLabels(service.clock.monotonic),
        )
        self.slots = slots or ConnectionSlots(self.settings.max_connections)
        self.update_rates = UpdateRates(
            service.clock, burst=self.settings.client_update_burst,
            rate_per_s=self.settings.client_update_rate_per_s,
        )  # fmt: skip
        self.sessions: SessionPort = EngineSessions.of(service)

    def add_routes(self, app: web.Application) -> None:
        streaming, agent = self.slots.guard(self.streaming), self.slots.guard(self.agent)
        app.router.add_get("/v3/ws", streaming)
        app.router.add_get("/v1/ws", agent)
        app.router.add_get("/labels/{labels}/v3/ws", streaming)
        app.router.add_get("/labels/{labels}/v1/ws", agent)

    async def _labels(self, request: web.Request) -> dict[str, str]:
        """All label sources merged (controlplane.labels); ValueError when one is
        malformed, LabelConflict when two disagree, LabelsUnavailable when a token's
        labels cannot be read."""
        path = ""
        if "labels" in request.match_info:  # the raw segment: split before URL-decoding
            path = request.raw_path.partition("?")[0].split("/")[2]
        credential = credential_of(request.headers.get("Authorization"))
        credential = request.query.get("token") or credential  # a temporary token
        labels = self.credential_labels.for_credential(credential)
        if not labels and credential is not None:
            labels = await self.credential_labels.for_token(credential)
        return merge_labels({
            "credential": labels,
            "path": parse_path_labels(path),
            "header": parse_labels(request.headers.get(LABELS_HEADER, "")),
            "query": parse_labels(request.query.get(LABELS_QUERY, "")),
        })  # fmt: skip

    def _client_ws(self) -> web.WebSocketResponse:
        return web.WebSocketResponse(
            compress=self.settings.websocket_compression,
            max_msg_size=self.settings.max_client_message_bytes,
        )

    async def _connect_upstream(
        self, url: str, request: web.Request
    ) -> aiohttp.ClientWebSocketResponse:
        headers = {h: request.headers[h] for h in FORWARDED_HEADERS if h in request.headers}
        if self.http is None:
            raise aiohttp.ClientConnectionError("gateway HTTP client is not started")
        return await self.http.ws_connect(
            url, headers=headers, autoclose=False, max_msg_size=0, compress=0,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
        )  # fmt: skip

    # -- streaming v3 --------------------------------------------------------------------
    async def streaming(self, request: web.Request) -> web.StreamResponse:
        if self.service.draining:
            return _http_error(503, "draining", "the control plane is shutting down")
        try:
            labels = await self._labels(request)
            query = {k: v for k, v in request.query.items() if k != LABELS_QUERY}
            info = STREAMING_V3.parse_connect_query(query)
        except LabelConflict as exc:
            self.service.metrics.rejects.labels(STREAMING_V3.name, "label_conflict").inc()
            return await _label_conflict(self._client_ws(), request, exc, agent=False)
        except LabelsUnavailable as exc:
            return _http_error(503, "backend_unavailable", str(exc))
        except (ValueError, DialectError) as exc:
            return _http_error(400, "bad_connect_parameters", str(exc))
        session, effective = self.service.new_session(
            kind=STREAMING_V3.name, model=info.model, labels=labels,
            client_config=info.client_config,
        )  # fmt: skip
        merged, skipped = STREAMING_V3.merge_connect_query(query, effective.config, info.model)
        url = self.settings.upstream_streaming_url + "?" + urlencode(merged)
        transport = UpstreamTransport(None, False, StreamingUpstream(merged))
        wire = {"connect": {k: v for k, v in merged.items() if k not in SECRET_QUERY}}
        if skipped:
            wire["skipped"] = dict(skipped)
        ws = self._client_ws()
        try:  # write-ahead: the connect entry durable before the dial (service.live)
            ls = await self.service.attach(
                session, effective, transport=transport, dialect=STREAMING_V3,
                running=effective.config, connect_wire=wire,
            )  # fmt: skip
        except Unavailable as exc:  # the registry is down: nothing dialled, retry later
            log.warning("streaming session %s not started: %s", session.id, exc)
            if await _upgraded(ws, request):
                await _refuse(ws, f"{NOT_CONNECTED}: {exc}", agent=False)
            return ws
        except Exception:
            if await _upgraded(ws, request):
                await _abort(ws, None, session.id)
            return ws
        refused = await self.service.connect_durable(ls)
        if refused is not None:
            await self.service.not_connected(ls, refused, NOT_RECORDED)
            if await _upgraded(ws, request):
                await _refuse(ws, refused, agent=False)
            return ws
        try:
            upstream = await self._connect_upstream(url, request)
        except aiohttp.WSServerHandshakeError as exc:
            why = f"upstream refused the connection (HTTP {exc.status})"
            await self.service.not_connected(ls, f"{NOT_CONNECTED}: {why}", "upstream_refused")
            return _http_error(exc.status, "upstream_rejected", why)
        except (aiohttp.ClientError, OSError) as exc:
            why = f"cannot reach the upstream ({unreachable(exc)})"
            log.warning("streaming session %s: %s", session.id, why)
            await self.service.not_connected(ls, f"{NOT_CONNECTED}: {why}", "upstream_unreachable")
            return _http_error(502, "upstream_unreachable", "cannot reach the upstream")
        transport.ws = upstream
        try:
            if _gone(request):
                raise ConnectionResetError("client left")
            await ws.prepare(request)
        except ConnectionResetError:  # (the upstream session began: its connect went)
            await self.service.detach(ls, "client_closed")
            return await self._client_gone(upstream, STREAMING_V3.name)
        await self._proxy(ws, upstream, ls, transport, first_deadline=True)
        return ws

    # -- voice agent ---------------------------------------------------------------------
    async def agent(self, request: web.Request) -> web.StreamResponse:
        if self.service.draining:
            return _http_error(503, "draining", "the control plane is shutting down")
        try:
            labels = await self._labels(request)
        except LabelsUnavailable as exc:
            return _http_error(503, "backend_unavailable", str(exc))
        except LabelConflict as exc:
            self.service.metrics.rejects.labels(VOICE_AGENT_V1.name, "label_conflict").inc()
            return await _label_conflict(self._client_ws(), request, exc, agent=True)
        except ValueError as exc:
            return _http_error(400, "bad_labels", str(exc))
        ws = self._client_ws()
        await ws.prepare(request)
        self.connections.add(ws)
        try:
            first = await first_frame(
                ws, self.settings.first_message_timeout_s, close_code=FIRST_MESSAGE_CLOSE,
                error=agent_error("timeout", "no session.update within "
                                        f"{self.settings.first_message_timeout_s:g}s"),
            )  # fmt: skip
            if first is None:
                return ws
            if first.type != WSMsgType.TEXT:
                await ws.close(code=1008, message=b"first message must be session.update")
                return ws
            try:
                message = parse_frame(first.data)
                problem = "first message must be a JSON object"
            except ValueError as exc:  # not JSON, or JSON we could not record faithfully
                message, problem = None, f"invalid first message: {exc}"
            if not isinstance(message, dict):
                await _agent_error(ws, "invalid_format", problem)
                await ws.close(code=1008, message=b"invalid first message")
                return ws
            resume = message.get("type") == "session.resume"
            call: str | None = None  # a resumed call keeps its bucketing (experiments, %)
            leftovers: Config | None = None  # its earlier session's policy values
            if resume:
                model, client_config, forward = VOICE_AGENT_V1.name, {}, message
                model = "voice-agent"
                resumed = message.get("session_id")
                if isinstance(resumed, str) and resumed:
                    try:
                        call = await self.service.call_of(resumed)  # None: never ours
                        if call is not None:
                            leftovers = _leftovers(await self.service.get_session(resumed))
                    except ControlPlaneError as exc:  # the registry is down: a new bucket
                        log.warning("resume of %s bucketed anew: %s", resumed, exc)
            else:
                info = VOICE_AGENT_V1.parse_first_update(message)
                model, client_config = info.model, dict(info.client_config)
            session, effective = self.service.new_session(
                kind=VOICE_AGENT_V1.name, model=model, labels=labels,
                client_config=client_config, bucket_id=call,
            )  # fmt: skip
            skipped: Mapping[str, str] = {}
            if not resume:
                forward, skipped = VOICE_AGENT_V1.merge_first_update(message, effective.config)
            link = AgentAcks(
                ack_timeout=self.settings.ack_timeout_s,
                applies_rest=self.settings.agent_partial_updates == "apply_rest",
            )
            transport = UpstreamTransport(None, True, link=link, answers_connect=not resume)
            wire: dict[str, Any] = {"first_message": forward}
            if skipped:
                wire["skipped"] = dict(skipped)
            running = {} if resume else effective.config
            try:  # write-ahead: the connect entry durable before the dial (service.live)
                ls = await self.service.attach(
                    session, effective, transport=transport, dialect=VOICE_AGENT_V1,
                    running=running, connect_wire=wire,
                )  # fmt: skip
                link.push_state = ls.push
            except Unavailable as exc:  # the registry is down: nothing dialled, retry later
                log.warning("voice agent session %s not started: %s", session.id, exc)
                await _refuse(ws, f"{NOT_CONNECTED}: {exc}", agent=True)
                return ws
            except Exception:
                await _abort(ws, None, session.id)
                return ws
            refused = await self.service.connect_durable(ls)
            if refused is not None:
                await self.service.not_connected(ls, refused, NOT_RECORDED)
                await _refuse(ws, refused, agent=True)
                return ws
            try:
                upstream = await self._connect_upstream(self.settings.upstream_agent_url, request)
            except aiohttp.WSServerHandshakeError as exc:
                code = "unauthorized" if exc.status in (401, 403) else "internal_error"
                why = f"upstream refused the connection (HTTP {exc.status})"
                await self.service.not_connected(ls, f"{NOT_CONNECTED}: {why}", "upstream_refused")
                await _agent_error(ws, code, why)
                await ws.close(code=1008 if code == "unauthorized" else 1011)
                return ws
            except (aiohttp.ClientError, OSError) as exc:
                await self.service.not_connected(
                    ls, f"{NOT_CONNECTED}: cannot reach the upstream ({unreachable(exc)})",
                    "upstream_unreachable")  # fmt: skip
                await _agent_error(ws, "internal_error", "cannot reach the upstream")
                await ws.close(code=1011)
                return ws
            if _gone(request):  # (nothing went upstream: the first message is still here)
                await self.service.not_connected(
                    ls, f"{NOT_CONNECTED}: the client left during the upstream handshake",
                    "client_closed")  # fmt: skip
                return await self._client_gone(upstream, VOICE_AGENT_V1.name)
            transport.ws = upstream
            try:
                now = asyncio.get_running_loop().time()
                # a connect session.update carries the effective config (running): its
                # answer (session.ready) is logged `connect acked`, the session's exposure
                refs = None if resume else effective.applied
                await send_upstream(upstream, link.first(forward, now, refs))
                if leftovers is not None:
                    self.sessions.resuming(ls, leftovers)
            except Exception:
                await _abort(ws, upstream, session.id)
                await self.service.detach(ls, "internal_error")
                return ws
            try:
                await self._proxy(ws, upstream, ls, transport)
            finally:
                if leftovers is not None:
                    self.sessions.resuming(ls, None)  # (answered or not: forgotten)
        except DialectError as exc:
            await _agent_error(ws, "invalid_config", str(exc))
            await ws.close(code=1008)
        finally:
            self.connections.discard(ws)
        return ws

    # -- both ----------------------------------------------------------------------------
    async def _client_gone(
        self, upstream: aiohttp.ClientWebSocketResponse, kind: str
    ) -> web.StreamResponse:
        """The client left while the upstream handshake was slow (the SDKs retry after 1 s):
        the upstream leg is closed with a close frame, counted, and no session starts."""
        self.service.metrics.client_gone.labels(kind).inc()
        log.info("%s client left during the upstream handshake; upstream leg closed", kind)
        with contextlib.suppress(Exception):
            await upstream.close(code=1000, message=b"client went away")
        return web.Response(status=499)  # never written: the connection is gone

    async def _proxy(
        self,
        ws: web.WebSocketResponse,
        upstream: aiohttp.ClientWebSocketResponse,
        ls: LiveSession,
        transport: UpstreamTransport,
        *,
        first_deadline: bool = False,
    ) -> None:
        """Relays until either side closes (``controlplane.edges.gateway_pump``); with
        ``first_deadline`` (``/v3/ws``) the client's first frame, audio included, must come
        within the first-message timeout."""
        self.connections.add(ws)
        machine = ProxySession(ls, rates=self.update_rates, streaming=transport.model,
                               acks=transport.link)  # fmt: skip
        pump = transport.pump = ProxyPump(ws, upstream, ls, machine, self.sessions)
        timeout = self.settings.first_message_timeout_s if first_deadline else None
        frames = FirstFrames(ws, timeout, close_code=STREAMING_CLOSE["invalid_message"],
                             error=streaming_silence_error(timeout or 0))  # fmt: skip
        cause = "client_closed"
        try:
            cause = await pump.relay(frames)
        finally:
            self.connections.discard(ws)
            self.update_rates.forget(ls.session.id)
            await self.service.detach(ls, cause)


async def _label_conflict(
    ws: web.WebSocketResponse, request: web.Request, conflict: LabelConflict, *, agent: bool
) -> web.StreamResponse:
    """Two label sources disagree: refused after the upgrade, so that every client sees why
    (SDKs surface close reasons and error messages, not HTTP bodies): Streaming v3 ``Error``,
    Voice Agent ``session.error`` ``label_conflict``, then close 1008 with the reason."""
    try:
        await ws.prepare(request)
    except ConnectionResetError:
        return web.Response(status=499)  # never written: the client is gone
    text = str(conflict)
    with contextlib.suppress(Exception):
        if agent:
            await _agent_error(ws, "label_conflict", text)
        else:
            await ws.send_str(json.dumps({"type": "Error", "error_code": 1008, "error": text}))
    await ws.close(code=1008, message=close_reason(text))
    return ws


def _gone(request: web.Request) -> bool:
    """Whether the client's connection is already closed (or closing)."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def _upgraded(ws: web.WebSocketResponse, request: web.Request) -> bool:
    """The client's socket upgraded, to tell it why it is refused (SDKs surface close
    reasons, not HTTP bodies); False when the client is gone."""
    try:
        await ws.prepare(request)
    except ConnectionResetError:
        return False
    return True


async def _refuse(ws: web.WebSocketResponse, reason: str, *, agent: bool) -> None:
    """A connect refused before the dial (its entry could not be made durable, or the
    registry could not claim its id): the dialect's error naming why, then close 1011 with
    the reason."""
    with contextlib.suppress(Exception):
        if agent:
            await _agent_error(ws, "internal_error", reason)
        else:
            error = {"type": "Error", "error_code": INTERNAL_ERROR_CLOSE, "error": reason}
            await ws.send_str(json.dumps(error))
    with contextlib.suppress(Exception):
        await ws.close(code=INTERNAL_ERROR_CLOSE, message=close_reason(reason))


async def _abort(
    ws: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse | None, session_id: str
) -> None:
    """A session that could not start (a bug of ours, or the registry down): logged, both
    legs closed (1011 to the client), nothing left open."""
    log.exception("gateway session %s could not start; closing it", session_id)
    if upstream is not None:
        with contextlib.suppress(Exception):
            await upstream.close()
    with contextlib.suppress(Exception):
        await ws.close(code=INTERNAL_ERROR_CLOSE, message=b"internal error")


async def _agent_error(ws: web.WebSocketResponse, code: str, message: str) -> None:
    with contextlib.suppress(Exception):
        await ws.send_str(agent_error(code, message))


def _http_error(status: int, code: str, message: str) -> web.Response:
    body = {"error": {"code": code, "message": message, "details": {}}}
    return web.json_response(body, status=status)


def unreachable(exc: BaseException) -> str:
    """A failed upstream dial said without any URL's query or user:password: a client's
    temporary ``token`` rides in the Streaming URL, and aiohttp's connect timeout names the
    whole URL (docs/security.md#secrets)."""
    return _USERINFO.sub("//***@", _QUERY.sub("?***", str(exc)))


def _leftovers(earlier: Mapping[str, Any]) -> Config:
    """The values policies set in the earlier session of a resumed call, as it ended (its
    record's effective config, the fields a policy owned): a resumed session running one of
    them runs a policy's leftover, not the client's own value."""
    owned = earlier.get("provenance") or {}
    return {
        name: tuple(value) if isinstance(value, list) else value
        for name, value in (earlier.get("effective_config") or {}).items()
        if name in owned
    }
