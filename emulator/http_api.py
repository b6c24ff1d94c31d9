"""HTTP endpoints: temporary tokens, voices, and the ``/_emulator`` inspection / fault API.

Inspection (shapes in docs/emulator.md):

- ``GET /_emulator/sessions[?kind=streaming-v3|voice-agent-v1][&state=open|suspended|closed]``
  -> ``{"items": [summary...], "next": null}`` (live sessions first, then closed, newest first)
- ``GET /_emulator/sessions/{id}`` -> summary + ``config``, ``timeline``, ``turns``, counters...
- ``POST /_emulator/sessions/{id}/faults`` (fault document) -> ``{"id", "faults"}``
- ``POST /_emulator/sessions/{id}/close`` ``{"code"?, "reason"?}`` -> server-side failure now
  (streaming default 3005 "Session Cancelled: An error occurred", voice agent 1011 with
  ``session.error internal_error``; the session ends)
- ``GET|POST /_emulator/faults`` -> defaults applied to sessions opened afterwards
- ``GET /_emulator/stats`` -> aggregate counters per kind and in total
- ``GET /_emulator/settings`` -> the effective settings (API keys redacted)
- ``DELETE /_emulator/sessions`` -> forget closed sessions
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web

from emulator.auth import TokenStore, key_ok
from emulator.errors import InvalidFaults
from emulator.faults import parse_faults
from emulator.inspection import Registry
from emulator.settings import EmulatorSettings
from sessions.dialects import streaming_v3_table as sv3
from sessions.dialects import voice_agent_v1_table as va1

__all__ = ["EmulatorState", "add_routes"]


class EmulatorState(Protocol):
    """What these routes use of the emulator's state (``emulator.server.EmulatorState``)."""

    @property
    def settings(self) -> EmulatorSettings: ...

    @property
    def registry(self) -> Registry: ...

    @property
    def tokens(self) -> TokenStore: ...

    def sweep(self) -> None: ...

    async def close_session(self, session_id: str, code: int, reason: str) -> bool: ...

    def reading(self, session_id: str, on: bool) -> None: ...


def _error(status: int, code: str, message: str, **details: Any) -> web.Response:
    body = {"error": {"code": code, "message": message, "details": details}}
    return web.json_response(body, status=status)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, ensure_ascii=False), status=status, content_type="application/json"
    )


def add_routes(router: web.UrlDispatcher, state: Callable[[web.Request], EmulatorState]) -> None:
    """Mount the HTTP routes; ``state`` finds the emulator's state from a request."""

    async def healthz(request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    def _token_params(request: web.Request, api: str) -> tuple[int, int | None] | web.Response:
        raw = request.query.get("expires_in_seconds")
        low, high = int(sv3.LIMITS["token_expires_min_s"]), int(sv3.LIMITS["token_expires_max_s"])
        if raw is None or not raw.isdigit() or not low <= int(raw) <= high:
            return _json({"error": f"expires_in_seconds must be an integer {low}-{high}"}, 400)
        session_raw = request.query.get("max_session_duration_seconds")
        session: int | None = None
        if session_raw is not None:
            s_low = int(sv3.LIMITS["token_session_min_s"])
            s_high = int(sv3.LIMITS["token_session_max_s"])
            if not session_raw.isdigit() or not s_low <= int(session_raw) <= s_high:
                return _json(
                    {"error": f"max_session_duration_seconds must be an integer {s_low}-{s_high}"},
                    400,
                )
            session = int(session_raw)
        return int(raw), session

    async def streaming_token(request: web.Request) -> web.Response:
        s = state(request).settings
        header = request.headers.get("Authorization", "").strip()
        scheme, _, rest = header.partition(" ")
        key = (
            rest.strip()
            if scheme.lower() == "bearer" and s.streaming_bearer == "accept"
            else header
        )
        if not key_ok(key, s) or (scheme.lower() == "bearer" and s.streaming_bearer == "reject"):
            return _json({"error": "Invalid API key"}, 401)
        params = _token_params(request, "streaming")
        if isinstance(params, web.Response):
            return params
        token = state(request).tokens.issue("streaming", key, params[0], params[1])
        return _json({"token": token, "expires_in_seconds": params[0]})

    async def agent_token(request: web.Request) -> web.Response:
        s = state(request).settings
        header = request.headers.get("Authorization", "").strip()
        scheme, _, rest = header.partition(" ")
        if scheme.lower() == "bearer":
            key = rest.strip()
        elif s.agent_accept_raw_key:
            key = header
        else:
            key = ""
        if not key_ok(key, s):
            return _json({"error": "Invalid API key"}, 401)
        params = _token_params(request, "agent")
        if isinstance(params, web.Response):
            return params
        token = state(request).tokens.issue("agent", key, params[0], params[1])
        return _json({"token": token, "expires_in_seconds": params[0]})

    async def voices(request: web.Request) -> web.Response:
        names = sorted(state(request).settings.voices)
        return _json({"voices": [{"voice_id": name, "name": name} for name in names]})

    async def list_sessions(request: web.Request) -> web.Response:
        st = state(request)
        st.sweep()
        kind = request.query.get("kind")
        wanted = request.query.get("state")
        items = [
            r.summary()
            for r in st.registry.records()
            if (kind is None or r.kind == kind) and (wanted is None or r.state == wanted)
        ]
        return _json({"items": items, "next": None})

    async def forget_sessions(request: web.Request) -> web.Response:
        return _json({"forgotten": state(request).registry.forget_closed()})

    async def get_session(request: web.Request) -> web.Response:
        st = state(request)
        st.sweep()
        record = st.registry.get(request.match_info["id"])
        if record is None:
            return _error(404, "session_not_found", "no such session", id=request.match_info["id"])
        return _json(record.detail())

    async def _body(request: web.Request) -> Any:
        try:
            return await request.json()
        except ValueError as exc:
            raise InvalidFaults("", f"the body is not JSON: {exc}") from exc

    async def session_faults(request: web.Request) -> web.Response:
        record = state(request).registry.get(request.match_info["id"])
        if record is None:
            return _error(404, "session_not_found", "no such session", id=request.match_info["id"])
        if record.state == "closed":
            return _error(409, "session_closed", "the session is closed", id=record.id)
        try:
            doc = await _body(request)
            spec = parse_faults(doc, record.faults.spec)
        except InvalidFaults as exc:
            return _error(400, "invalid_faults", str(exc), field=exc.field)
        record.faults.set(spec)
        if isinstance(doc, dict) and "stop_reading" in doc:  # at once, not after a frame
            state(request).reading(record.id, not spec.stop_reading)
        return _json({"id": record.id, "faults": record.faults.to_dict()})

    async def close_session(request: web.Request) -> web.Response:
        st = state(request)
        record = st.registry.get(request.match_info["id"])
        if record is None:
            return _error(404, "session_not_found", "no such session", id=request.match_info["id"])
        body = await request.json() if request.can_read_body else {}
        if not isinstance(body, dict):
            return _error(400, "invalid_body", "the body must be a JSON object")
        if record.kind == sv3.DIALECT:
            default_code, default_reason = (
                sv3.CLOSE["cancelled"],
                "Session Cancelled: An error occurred",
            )
        else:
            default_code, default_reason = va1.CLOSE["internal"], "Internal server error"
        code = body.get("code", default_code)
        reason = body.get("reason", default_reason)
        if isinstance(code, bool) or not isinstance(code, int) or not isinstance(reason, str):
            return _error(400, "invalid_body", "code must be an integer and reason a string")
        if not await st.close_session(record.id, code, reason):
            return _error(409, "session_not_live", "the session has no open socket", id=record.id)
        return _json({"id": record.id, "closed": {"code": code, "reason": reason}})

    async def get_faults(request: web.Request) -> web.Response:
        return _json({"faults": state(request).registry.default_faults.to_dict()})

    async def set_faults(request: web.Request) -> web.Response:
        registry = state(request).registry
        try:
            registry.default_faults = parse_faults(await _body(request), registry.default_faults)
        except InvalidFaults as exc:
            return _error(400, "invalid_faults", str(exc), field=exc.field)
        return _json({"faults": registry.default_faults.to_dict()})

    async def stats(request: web.Request) -> web.Response:
        st = state(request)
        st.sweep()
        return _json(st.registry.stats.snapshot(st.registry.current_by_kind()))

    async def settings(request: web.Request) -> web.Response:
        return _json(state(request).settings.public())

    router.add_get("/healthz", healthz)
    router.add_get("/v3/token", streaming_token)
    router.add_get("/v1/token", agent_token)
    router.add_get("/v1/voices", voices)
    router.add_get("/_emulator/sessions", list_sessions)
    router.add_delete("/_emulator/sessions", forget_sessions)
    router.add_get("/_emulator/sessions/{id}", get_session)
    router.add_post("/_emulator/sessions/{id}/faults", session_faults)
    router.add_post("/_emulator/sessions/{id}/close", close_session)
    router.add_get("/_emulator/faults", get_faults)
    router.add_post("/_emulator/faults", set_faults)
    router.add_get("/_emulator/stats", stats)
    router.add_get("/_emulator/settings", settings)
