"""Temporary-token endpoints passed through to the upstream's HTTPS API.

``GET /v3/token`` (Streaming v3) and ``GET /v1/token`` (Voice Agent), also under
``/labels/{…}/``, are forwarded with the client's ``Authorization`` (and ``AssemblyAI-Version``,
``User-Agent``) and query to the host of the configured upstream WebSocket URL (``wss`` ->
``https``, the path's trailing ``/ws`` -> ``/token``); the upstream's status and body come back
unchanged. SDKs that mint tokens at the host they stream to (the Python SDK:
``https://{api_host}/v3/token``) then work with only the host changed. Neither the credential
nor the token is ever logged. A token minted with a key that has credential labels carries
them (``CredentialLabels.remember_token``).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp import web

from controlplane.labels import credential_of

if TYPE_CHECKING:
    from controlplane.edges.gateway import Gateway

__all__ = ["TokenProxy", "token_url"]

log = logging.getLogger(__name__)

FORWARDED: Final = ("Authorization", "AssemblyAI-Version", "User-Agent")
PASSED_BACK: Final = ("Retry-After",)  # a 429's advice reaches the client
MAX_BODY_BYTES: Final = 64 * 1024
TIMEOUT_S: Final = 10.0
MAX_WINDOW_S: Final = 600.0  # the longest redemption window the upstream grants


def token_url(ws_url: str) -> str:
    """The token endpoint beside an upstream WebSocket URL: ``wss://h/v3/ws`` ->
    ``https://h/v3/token`` (``ws`` -> ``http``; a path prefix is kept)."""
    parts = urlsplit(ws_url)
    scheme = {"wss": "https", "ws": "http"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    path = path[: -len("/ws")] + "/token" if path.endswith("/ws") else path + "/token"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def _error(status: int, code: str, message: str) -> web.Response:
    body = {"error": {"code": code, "message": message, "details": {}}}
    return web.json_response(body, status=status)


class TokenProxy:
    """The two token routes; the HTTP client is the gateway's (created at startup)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def add_routes(self, app: web.Application) -> None:
        for prefix in ("", "/labels/{labels}"):
            app.router.add_get(prefix + "/v3/token", self.streaming)
            app.router.add_get(prefix + "/v1/token", self.agent)

    async def streaming(self, request: web.Request) -> web.StreamResponse:
        return await self._pass(request, token_url(self.gateway.settings.upstream_streaming_url))

    async def agent(self, request: web.Request) -> web.StreamResponse:
        return await self._pass(request, token_url(self.gateway.settings.upstream_agent_url))

    async def _pass(self, request: web.Request, url: str) -> web.StreamResponse:
        http = self.gateway.http
        if http is None or self.gateway.service.draining:
            return _error(503, "draining", "the control plane is not serving")
        headers = {h: request.headers[h] for h in FORWARDED if h in request.headers}
        query = request.query_string
        try:
            async with http.get(
                url + ("?" + query if query else ""), headers=headers, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
            ) as resp:  # fmt: skip
                body = await resp.content.read(MAX_BODY_BYTES + 1)
                status, content_type = resp.status, resp.content_type
                kept = {h: resp.headers[h] for h in PASSED_BACK if h in resp.headers}
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            # the URL carries no secret; the exception type says enough (never the headers)
            log.warning("token endpoint %s unreachable: %s", url, type(exc).__name__)
            return _error(502, "upstream_unreachable", "cannot reach the upstream token endpoint")
        if len(body) > MAX_BODY_BYTES:
            return _error(502, "upstream_bad_answer", "the upstream token answer is too large")
        if status == 200 and not await self._remember(request, body):
            return _error(503, "backend_unavailable",
                          "the token's labels could not be stored; try again")  # fmt: skip
        return web.Response(body=body, status=status, content_type=content_type, headers=kept)

    async def _remember(self, request: web.Request, body: bytes) -> bool:
        """Keep the labels of a token minted with a labelled key; False when they could not
        be stored (the token is then not handed out: its sessions would lack them)."""
        key = credential_of(request.headers.get("Authorization"))
        if key is None:
            return True
        try:
            answer = json.loads(body)
        except ValueError:
            return True
        if not isinstance(answer, dict) or not isinstance(answer.get("token"), str):
            return True
        window = answer.get("expires_in_seconds")
        if not isinstance(window, int | float) or isinstance(window, bool):
            window = MAX_WINDOW_S
        window = min(max(float(window), 0.0), MAX_WINDOW_S)
        try:
            await self.gateway.credential_labels.remember_token(key, answer["token"], window)
        except Exception as exc:  # the shared store (Redis) is down; never the token logged
            log.warning("token labels not stored: %s", type(exc).__name__)
            return False
        return True
