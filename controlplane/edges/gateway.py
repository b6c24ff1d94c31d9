"""Gateway: ``GET /v3/ws`` and ``GET /v1/ws`` proxied to the configured upstream.

Wire-compatible (official SDKs only change the host). Each session is registered on connect
and starts on its effective configuration (late joiners: policy fields merged into the
streaming connect query or the agent's first ``session.update``). Audio passes through
untouched; client updates are forwarded except fields locked by an applying policy, which
are stripped and logged. Pushes go to the upstream socket; on the Voice Agent API the
acknowledgements of our pushes are consumed here, not forwarded (the client did not send
those updates). Client credentials are forwarded and never logged.

Client text frames are parsed under the REST body rules (``controlplane.api.inputs
.parse_frame``). Text that is not JSON is forwarded untouched (the upstream answers it). JSON
that cannot be recorded faithfully — a duplicate key (the upstream's parser may pick the other
one: a lock bypass), ``NaN``, a lone surrogate, too deep — is refused the upstream's way:
Streaming v3 ``Error`` 3006 and close 3006, Voice Agent ``session.error`` ``invalid_format``
(the session stays open). An update with a malformed value is forwarded for the upstream to
judge, but never with a locked field. An unexpected failure of ours closes that session with
1011 and is logged; the gateway carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import WSMsgType, web

from controlplane.api.inputs import FrameNotJson, UnsafeFrame, parse_frame
from controlplane.edges.admission import (
    FIRST_MESSAGE_CLOSE,
    ConnectionSlots,
    FirstFrames,
    UpdateRates,
    first_frame,
    refuse_over_rate,
    streaming_silence_error,
)
from controlplane.edges.gateway_acks import AgentLink
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
from controlplane.push.engine import (
    CONGESTED_BYTES,
    LiveSession,
    PushEngine,
    write_buffer_size,
)
from controlplane.push.protocol import Push
from controlplane.service.plane import ControlPlane
from policies.fields import Delta
from sessions.dialects.base import (
    Acked,
    Dialect,
    Ready,
    Rejected,
    TurnBoundary,
)
from sessions.dialects.streaming_v3 import STREAMING_V3
from sessions.dialects.streaming_v3 import UPDATE_TYPE as STREAMING_UPDATE
from sessions.dialects.streaming_v3_table import CLOSE as STREAMING_CLOSE
from sessions.dialects.streaming_v3_upstream import StreamingUpstream
from sessions.dialects.voice_agent_v1 import VOICE_AGENT_V1
from sessions.errors import DialectError

__all__ = ["Gateway", "parse_labels"]

log = logging.getLogger(__name__)

FORWARDED_HEADERS = ("Authorization", "AssemblyAI-Version", "User-Agent")
LABELS_HEADER = "X-Session-Labels"
LABELS_QUERY = "cp_labels"  # for browser clients that cannot set headers; never forwarded
SECRET_QUERY = frozenset({"token"})
INTERNAL_ERROR_CLOSE = 1011


class UpstreamTransport:
    """Writes pushes to the upstream socket; remembers which acks are ours (Voice Agent)."""

    __slots__ = ("acknowledging", "link", "model", "ws")

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        acknowledging: bool,
        model: StreamingUpstream | None = None,
        link: AgentLink | None = None,
    ) -> None:
        self.ws = ws
        self.acknowledging = acknowledging
        self.model = model  # Streaming v3: what the upstream runs, frame by frame
        self.link = link  # Voice Agent: one update outstanding, answers attributed

    def congested(self) -> bool:
        return write_buffer_size(self.ws) > CONGESTED_BYTES

    async def write(self, push: Push, wire: dict[str, Any], text: str) -> None:
        if self.ws.closed:
            raise ConnectionError("upstream socket is closed")
        if self.link is not None:  # sent when no other session.update is outstanding
            await self.link.push(push, wire)
            return
        if self.model is not None:
            self.model.pushed(wire)
        await self.ws.send_str(text)


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
        try:
            upstream = await self._connect_upstream(url, request)
        except aiohttp.WSServerHandshakeError as exc:
            return _http_error(exc.status, "upstream_rejected",
                               f"upstream refused the connection (HTTP {exc.status})")  # fmt: skip
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("streaming upstream unreachable: %s", exc)
            return _http_error(502, "upstream_unreachable", "cannot reach the upstream")
        ws = self._client_ws()
        try:
            if _gone(request):
                raise ConnectionResetError("client left")
            await ws.prepare(request)
        except ConnectionResetError:
            return await self._client_gone(upstream, STREAMING_V3.name)
        transport = UpstreamTransport(upstream, False, StreamingUpstream(merged))
        wire = {"connect": {k: v for k, v in merged.items() if k not in SECRET_QUERY}}
        if skipped:
            wire["skipped"] = dict(skipped)
        try:
            ls = await self.service.attach(
                session, effective, transport=transport, dialect=STREAMING_V3,
                running=effective.config, connect_wire=wire,
            )  # fmt: skip
        except Exception:
            await _abort(ws, upstream, session.id)
            return ws
        await self._proxy(ws, upstream, ls, transport, STREAMING_V3, first_deadline=True)
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
                error=_agent_error_text("timeout", "no session.update within "
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
            if resume:
                model, client_config, forward = VOICE_AGENT_V1.name, {}, message
                model = "voice-agent"
            else:
                info = VOICE_AGENT_V1.parse_first_update(message)
                model, client_config = info.model, dict(info.client_config)
            session, effective = self.service.new_session(
                kind=VOICE_AGENT_V1.name, model=model, labels=labels,
                client_config=client_config,
            )  # fmt: skip
            skipped: Mapping[str, str] = {}
            if not resume:
                forward, skipped = VOICE_AGENT_V1.merge_first_update(message, effective.config)
            try:
                upstream = await self._connect_upstream(self.settings.upstream_agent_url, request)
            except aiohttp.WSServerHandshakeError as exc:
                code = "unauthorized" if exc.status in (401, 403) else "internal_error"
                await _agent_error(ws, code, f"upstream refused the connection (HTTP {exc.status})")
                await ws.close(code=1008 if code == "unauthorized" else 1011)
                return ws
            except (aiohttp.ClientError, OSError):
                await _agent_error(ws, "internal_error", "cannot reach the upstream")
                await ws.close(code=1011)
                return ws
            if _gone(request):
                return await self._client_gone(upstream, VOICE_AGENT_V1.name)
            link = AgentLink(self.service, upstream, ws)
            transport = UpstreamTransport(upstream, True, link=link)
            wire: dict[str, Any] = {"first_message": forward}
            if skipped:
                wire["skipped"] = dict(skipped)
            running = {} if resume else effective.config
            try:
                await link.send_first(forward)
                ls = await self.service.attach(
                    session, effective, transport=transport, dialect=VOICE_AGENT_V1,
                    running=running, connect_wire=wire,
                )  # fmt: skip
                link.ls = ls
            except Exception:
                await link.close()
                await _abort(ws, upstream, session.id)
                return ws
            await self._proxy(ws, upstream, ls, transport, VOICE_AGENT_V1)
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
        dialect: Dialect,
        *,
        first_deadline: bool = False,
    ) -> None:
        """Relays until either side closes; with ``first_deadline`` (``/v3/ws``) the client's
        first frame, audio included, must come within the first-message timeout."""
        self.connections.add(ws)
        cause = "client_closed"
        reader = asyncio.get_running_loop().create_task(
            self._from_upstream(ws, upstream, ls, transport, dialect),
            name=f"gateway-upstream-{ls.session.id}",
        )
        try:
            timeout = self.settings.first_message_timeout_s if first_deadline else None
            frames = FirstFrames(ws, timeout, close_code=STREAMING_CLOSE["invalid_message"],
                                 error=streaming_silence_error(timeout or 0))  # fmt: skip
            async for msg in frames:
                if msg.type == WSMsgType.BINARY:
                    await upstream.send_bytes(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    await self._from_client(msg.data, ws, upstream, ls, transport, dialect)
            if frames.silent:
                cause = "first_message_timeout"
            elif reader.done():
                cause = "upstream_closed"
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            cause = f"proxy_error: {type(exc).__name__}"
        except Exception:  # a bug of ours: end this session, keep serving the others
            cause = "internal_error"
            log.exception("gateway session %s failed; closing it", ls.session.id)
            with contextlib.suppress(Exception):
                await ws.close(code=INTERNAL_ERROR_CLOSE, message=b"internal error")
        finally:
            if not upstream.closed:
                code = ws.close_code if ws.close_code and ws.close_code != 1006 else 1000
                with contextlib.suppress(Exception):
                    await upstream.close(code=code)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            if transport.link is not None:
                await transport.link.close()
            if reader.done() and not reader.cancelled() and cause == "client_closed":
                cause = "upstream_closed"
            self.connections.discard(ws)
            self.update_rates.forget(ls.session.id)
            await self.service.detach(ls, cause)

    async def _from_client(
        self,
        data: str,
        ws: web.WebSocketResponse,
        upstream: aiohttp.ClientWebSocketResponse,
        ls: LiveSession,
        transport: UpstreamTransport,
        dialect: Dialect,
    ) -> None:
        try:
            message = parse_frame(data)
        except FrameNotJson:
            message = None  # not JSON: forwarded untouched, the upstream answers it
        except UnsafeFrame as exc:
            await self._refuse(ws, ls, dialect, str(exc))
            return
        link = transport.link
        if not isinstance(message, dict):
            await (upstream.send_str(data) if link is None else link.client_other(data))
            return
        if transport.model is not None and message.get("type") == STREAMING_UPDATE:
            if not await self._over_update_rate(ws, ls, dialect):
                await self._streaming_update(message, data, ws, upstream, ls, transport.model)
            return
        try:
            delta = dialect.parse_client_update(message)
        except DialectError as exc:  # a malformed value: the upstream judges it, locks hold
            if await self._over_update_rate(ws, ls, dialect):
                return
            await self._forward_malformed(message, data, exc, ws, upstream, ls, transport, dialect)
            return
        if delta is None:  # not an update: untouched (upstream judges it)
            if link is None or message.get("type") == "input.audio":
                await upstream.send_str(data)
            else:
                await link.client_other(data)
            return
        if await self._over_update_rate(ws, ls, dialect):
            return
        forward_text, stripped = self._without_locked(
            ls, dialect, message, data, sorted(set(delta) & set(ls.locks)), delta=delta
        )
        if stripped and dialect.acknowledges:  # the client learns why, in its own protocol
            await _locked_error(ws, ls, stripped)
        if forward_text is None:
            return
        if link is not None:  # logged when its answer comes (AgentLink)
            await link.client_update(json.loads(forward_text))
            return
        await upstream.send_str(forward_text)
        forwarded: Delta = {k: v for k, v in delta.items() if k not in stripped}
        if forwarded:  # (a control-plane dialect without its own update handling)
            await self.service.engine.client_update(ls, forwarded, self.service.policies_for(ls))
            self.service.engine.record(
                ls, cause="client", status="sent", delta=forwarded,
                wire=json.loads(forward_text),
            )  # fmt: skip

    async def _streaming_update(
        self,
        message: dict[str, Any],
        data: str,
        ws: web.WebSocketResponse,
        upstream: aiohttp.ClientWebSocketResponse,
        ls: LiveSession,
        model: StreamingUpstream,
    ) -> None:
        """A client's ``UpdateConfiguration``, judged on its effect by the upstream's own
        config model: what would change a locked field is stripped (the client gets a
        ``Warning`` naming it), the rest goes upstream and is logged with its effective delta
        (presets, clamps and dropped keyterms included)."""
        locks = {f: f"policy {ref.id} v{ref.version}" for f, ref in ls.locks.items()}
        effect = model.client_update(message, locks)
        # Logged and adopted before the frame goes (no await in between: the model, the push
        # state and the wire keep one order, whatever push the engine writes meanwhile).
        if effect.stripped:
            self.service.engine.record(
                ls, cause="client", status="rejected", wire=message,
                error="; ".join(effect.stripped.values()),
                delta=dict(effect.refused),
            )  # fmt: skip
            self.service.metrics.rejects.labels(ls.session.kind, "locked_field").inc()
        if effect.forward is not None and effect.delta:
            await self.service.engine.client_update(ls, effect.delta, self.service.policies_for(ls))
            self.service.engine.record(
                ls, cause="client", status="sent", delta=effect.delta, wire=effect.forward
            )
        if effect.forward is not None:
            await upstream.send_str(data if not effect.stripped else json.dumps(effect.forward))
        if effect.warning is not None:
            with contextlib.suppress(Exception):
                await ws.send_str(json.dumps(effect.warning))

    async def _over_update_rate(
        self, ws: web.WebSocketResponse, ls: LiveSession, dialect: Dialect
    ) -> bool:
        """True when this client update is over the session's rate: dropped, neither forwarded
        nor logged (docs/reliability.md#connection-limits)."""
        if self.update_rates.allow(ls.session.id):
            return False
        self.service.metrics.rejects.labels(ls.session.kind, "rate_limited").inc()
        problem = self.update_rates.problem()
        frame = _agent_error_text("rate_limited", problem) if dialect.acknowledges else None
        await refuse_over_rate(ws, problem, error_frame=frame)
        return True

    def _without_locked(
        self,
        ls: LiveSession,
        dialect: Dialect,
        message: dict[str, Any],
        data: str,
        locked: list[str],
        *,
        delta: Delta | None = None,
        note: str = "",
    ) -> tuple[str | None, tuple[str, ...]]:
        """The client frame to forward without the ``locked`` fields it carries (None when
        nothing is left), and the fields stripped; each refusal is logged and counted."""
        if not locked:
            return data, ()
        stripped_msg, stripped = dialect.strip_locked(message, locked)
        if not stripped:
            return data, ()
        owners = ", ".join(
            f"{f} locked by policy {ls.locks[f].id} v{ls.locks[f].version}" for f in stripped
        )
        self.service.engine.record(
            ls, cause="client", status="rejected", wire=message, error=owners + note,
            delta={k: delta[k] for k in stripped} if delta is not None else {},
        )  # fmt: skip
        self.service.metrics.rejects.labels(ls.session.kind, "locked_field").inc()
        return (None if stripped_msg is None else json.dumps(stripped_msg)), stripped

    async def _forward_malformed(
        self,
        message: dict[str, Any],
        data: str,
        error: DialectError,
        ws: web.WebSocketResponse,
        upstream: aiohttp.ClientWebSocketResponse,
        ls: LiveSession,
        transport: UpstreamTransport,
        dialect: Dialect,
    ) -> None:
        """An update with a wrongly-typed canonical value goes to the upstream, which answers
        it — but without locked fields: an upstream that applies the valid rest of a message
        must not receive a locked value next to a malformed one."""
        forward_text, stripped = self._without_locked(
            ls, dialect, message, data, sorted(ls.locks), note=f" (malformed update: {error})"
        )
        if stripped and dialect.acknowledges:
            await _locked_error(ws, ls, stripped)
        if forward_text is None:
            return
        if transport.link is not None:
            await transport.link.client_update(json.loads(forward_text))
            return
        await upstream.send_str(forward_text)

    async def _refuse(
        self, ws: web.WebSocketResponse, ls: LiveSession, dialect: Dialect, problem: str
    ) -> None:
        """A client frame we cannot record faithfully: refused the way the upstream refuses
        bad JSON (Streaming v3: ``Error`` + close 3006; Voice Agent: ``session.error``
        ``invalid_format``, the session stays open). Nothing reaches the upstream."""
        self.service.metrics.rejects.labels(ls.session.kind, "invalid_frame").inc()
        log.info("session %s: client frame refused: %s", ls.session.id, problem)
        if dialect.acknowledges:
            await _agent_error(ws, "invalid_format", f"message refused: {problem}")
            return
        code = STREAMING_CLOSE["invalid_message"]
        reason = f"Invalid JSON: {problem}"
        with contextlib.suppress(Exception):
            await ws.send_str(json.dumps({"type": "Error", "error_code": code, "error": reason}))
        await ws.close(code=code, message=_close_reason(reason))

    async def _from_upstream(
        self,
        ws: web.WebSocketResponse,
        upstream: aiohttp.ClientWebSocketResponse,
        ls: LiveSession,
        transport: UpstreamTransport,
        dialect: Dialect,
    ) -> None:
        engine = self.service.engine
        close_code, close_reason = 1011, "upstream connection lost"
        try:
            while True:
                msg = await upstream.receive()
                if msg.type == WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
                    continue
                if msg.type == WSMsgType.CLOSE:
                    close_code, close_reason = int(msg.data), str(msg.extra or "")
                    break
                if msg.type != WSMsgType.TEXT:
                    break
                await self._upstream_text(msg.data, ws, ls, transport, dialect, engine)
        except (ConnectionError, aiohttp.ClientError, RuntimeError):
            pass
        except Exception:  # a bug of ours: logged; the client sees 1011
            log.exception("gateway session %s: upstream message handling failed", ls.session.id)
            close_code, close_reason = INTERNAL_ERROR_CLOSE, "internal error"
        finally:
            if not upstream.closed:
                with contextlib.suppress(Exception):
                    await upstream.close()
            if not ws.closed:
                code = close_code if close_code not in (1005, 1006) else 1011
                with contextlib.suppress(Exception):
                    await ws.close(code=code, message=_close_reason(close_reason))

    async def _upstream_text(
        self,
        data: str,
        ws: web.WebSocketResponse,
        ls: LiveSession,
        transport: UpstreamTransport,
        dialect: Dialect,
        engine: PushEngine,
    ) -> None:
        try:
            parsed = json.loads(data)
        except ValueError:
            await ws.send_str(data)
            return
        event = dialect.parse_upstream(parsed) if isinstance(parsed, dict) else None
        if isinstance(event, Ready):
            ls.session.upstream_id = event.upstream_id
            engine.mark_ready(ls)
            if transport.acknowledging and ls.push.acked_version < 1:
                ls.push.acked_version = 1
                engine.record(ls, cause="connect", status="acked", delta={}, wire=None,
                              version=1)  # fmt: skip
            await ws.send_str(data)
            if transport.link is not None and isinstance(parsed, dict):
                await transport.link.ready(parsed)
            await engine.kick(ls)
            return
        if isinstance(event, TurnBoundary):
            await ws.send_str(data)
            await engine.turn_boundary(ls)
            return
        if isinstance(event, Acked | Rejected) and transport.link is not None:
            assert isinstance(parsed, dict)
            await transport.link.answer(parsed, data)  # attributed: forwarded or consumed
            return
        await ws.send_str(data)


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
    await ws.close(code=1008, message=_close_reason(text))
    return ws


def _gone(request: web.Request) -> bool:
    """Whether the client's connection is already closed (or closing)."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def _abort(
    ws: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse, session_id: str
) -> None:
    """A session that could not start (a bug of ours, or the registry down): logged, both
    legs closed (1011 to the client), nothing left open."""
    log.exception("gateway session %s could not start; closing it", session_id)
    with contextlib.suppress(Exception):
        await upstream.close()
    with contextlib.suppress(Exception):
        await ws.close(code=INTERNAL_ERROR_CLOSE, message=b"internal error")


async def _agent_error(
    ws: web.WebSocketResponse, code: str, message: str, param: str | None = None
) -> None:
    body = {"type": "session.error", "code": code, "message": message}
    if param is not None:
        body["param"] = param
    with contextlib.suppress(Exception):
        await ws.send_str(json.dumps(body))


async def _locked_error(
    ws: web.WebSocketResponse, ls: LiveSession, fields: tuple[str, ...]
) -> None:
    """Voice Agent: the locked fields stripped from a client's ``session.update`` are refused
    with a ``session.error`` ``immutable_field`` (the code clients already treat as "change
    dropped, session open"), ``param`` the first field's path, the message naming them all."""
    paths = [VOICE_AGENT_V1.wire_path(f) for f in fields]
    owners = "; ".join(
        f"{path} ({f}) is locked by policy {ls.locks[f].id} v{ls.locks[f].version}"
        for f, path in zip(fields, paths, strict=True)
    )
    await _agent_error(ws, "immutable_field", f"refused by the control plane: {owners}", paths[0])


def _agent_error_text(code: str, message: str) -> str:
    return json.dumps({"type": "session.error", "code": code, "message": message})


def _close_reason(text: str) -> bytes:
    """A close frame's reason: at most 120 bytes of UTF-8, cut at a character boundary."""
    return text.encode("utf-8", "replace")[:120].decode("utf-8", "ignore").encode("utf-8")


def _http_error(status: int, code: str, message: str) -> web.Response:
    body = {"error": {"code": code, "message": message, "details": {}}}
    return web.json_response(body, status=status)
