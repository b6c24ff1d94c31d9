"""Temporary tokens through the gateway: ``GET /v3/token`` passes through to the upstream,
the Python SDK mints and streams with only the host changed (over TLS, as it requires)."""

from __future__ import annotations

import hashlib
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
import websockets
from aiohttp import web
from assemblyai.streaming.v3 import (
    AsyncRealTimeTranscriber,
    BeginEvent,
    RealTimeEvents,
    RealTimeParameters,
    RealTimeTranscriberOptions,
)

from controlplane.app import SERVICE, build_app
from controlplane.config import Settings
from controlplane.tls import tls_context
from tests.integration.service.conftest import ControlPlaneUnderTest, Emulator, eventually
from tests.support.tls import self_signed


class TLSControlPlane(ControlPlaneUnderTest):
    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ws_base(self) -> str:
        return f"wss://127.0.0.1:{self.port}"


@asynccontextmanager
async def tls_cp(settings: Settings) -> AsyncIterator[ControlPlaneUnderTest]:
    assert settings.tls_cert is not None and settings.tls_key is not None
    trust = ssl.create_default_context(cafile=str(settings.tls_cert))
    app = build_app(settings)
    runner = web.AppRunner(app, shutdown_timeout=5, access_log=None)  # as serve runs it
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0,
                       ssl_context=tls_context(settings.tls_cert, settings.tls_key))  # fmt: skip
    await site.start()
    port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    try:
        connector = aiohttp.TCPConnector(ssl=trust)
        async with aiohttp.ClientSession(connector=connector) as http:
            yield TLSControlPlane(port, http, app[SERVICE], settings.data_dir)
    finally:
        await runner.cleanup()


async def _begin(client: AsyncRealTimeTranscriber) -> BeginEvent:
    begins: list[BeginEvent] = []
    client.on(RealTimeEvents.Begin, lambda _c, event: begins.append(event))
    await client.connect(RealTimeParameters(sample_rate=16000,
                                            speech_model="universal-3-5-pro"))  # fmt: skip
    await eventually(lambda: begins)
    return begins[0]


async def test_python_sdk_temporary_token_flow_with_only_the_host_changed(
    cp_settings: Callable[..., Settings], emulator: Emulator, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the SDK's httpx and websockets trust it
    labels_file = tmp_path / "credential-labels"
    labels_file.write_text(f"{hashlib.sha256(b'tenant-key').hexdigest()} tenant=acme\n")
    settings = cp_settings(tls_cert=cert, tls_key=key, credential_labels_file=labels_file)
    async with tls_cp(settings) as cp:
        host = f"127.0.0.1:{cp.port}"  # a bare host, as for AssemblyAI: https:// and wss://
        minting = AsyncRealTimeTranscriber(
            RealTimeTranscriberOptions(api_key="tenant-key", api_host=host))  # fmt: skip
        token = await minting.create_temporary_token(expires_in_seconds=60)
        await minting.disconnect()  # closes its HTTP client (never connected)
        assert token.startswith("eyJ")  # the emulator's token, passed through

        client = AsyncRealTimeTranscriber(RealTimeTranscriberOptions(token=token, api_host=host))
        begin = await _begin(client)
        try:
            session = await cp.session(cp.live_by_upstream(begin.id))
            assert session["labels"] == {"tenant": "acme"}  # the minting key's labels
            upstream = await emulator.session(begin.id)
            assert upstream["state"] == "open"
        finally:
            await client.disconnect(terminate=True)

        # single use, as upstream: a second session with the same token is refused there
        trust = ssl.create_default_context(cafile=str(cert))
        url = f"wss://{host}/v3/ws?sample_rate=16000&token={token}"
        async with websockets.connect(url, ssl=trust) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008

        # upstream errors come back as they are (bad window: 400 with the upstream's body)
        async with cp.http.get(f"https://{host}/v3/token?expires_in_seconds=0",
                               headers={"Authorization": "tenant-key"}) as resp:  # fmt: skip
            assert resp.status == 400
            assert "expires_in_seconds" in json.loads(await resp.text())["error"]
    # the service's loggers (serve runs without aiohttp's access log; the clients' own debug
    # logs and the emulator fixture's access log are not the service's)
    ours = ("controlplane", "sessions", "aiohttp.server", "aiohttp.web", "aiohttp.client")
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(ours))
    assert token not in logged and "tenant-key" not in logged


async def test_agent_token_passes_through_and_an_unreachable_upstream_is_502(
    cp_settings: Callable[..., Settings], emulator: Emulator, tmp_path: Path,
) -> None:  # fmt: skip
    settings = cp_settings()
    app = build_app(settings)
    runner = web.AppRunner(app, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port}/v1/token?expires_in_seconds=60"
            async with http.get(url, headers={"Authorization": "Bearer k"}) as resp:
                assert resp.status == 200
                token = (await resp.json())["token"]
            headers = {"Authorization": f"Bearer {token}"}
            async with websockets.connect(f"ws://127.0.0.1:{port}/v1/ws",
                                          additional_headers=headers) as ws:  # fmt: skip
                await ws.send(json.dumps({"type": "session.update", "session": {}}))
                assert json.loads(await ws.recv())["type"] == "session.ready"
    finally:
        await runner.cleanup()
    dead = cp_settings(upstream_streaming_url="ws://127.0.0.1:9/v3/ws")
    app = build_app(dead)
    runner = web.AppRunner(app, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port}/v3/token?expires_in_seconds=60"
            async with http.get(url, headers={"Authorization": "k"}) as resp:
                assert resp.status == 502
                assert (await resp.json())["error"]["code"] == "upstream_unreachable"
    finally:
        await runner.cleanup()


def test_token_url_beside_the_websocket_url() -> None:
    from controlplane.edges.token_proxy import token_url

    assert token_url("wss://streaming.assemblyai.com/v3/ws") == (
        "https://streaming.assemblyai.com/v3/token")  # fmt: skip
    assert token_url("ws://127.0.0.1:8090/v1/ws") == "http://127.0.0.1:8090/v1/token"
    assert token_url("wss://proxy.example/aai/v3/ws/") == "https://proxy.example/aai/v3/token"


async def test_an_upstream_429_comes_back_with_its_retry_after(
    cp_settings: Callable[..., Settings],
) -> None:
    seen: list[dict[str, str]] = []

    async def busy(request: web.Request) -> web.Response:  # a token endpoint out of quota
        seen.append({"auth": request.headers.get("Authorization", ""),
                     "query": request.query_string})  # fmt: skip
        return web.json_response({"error": "Too many requests"}, status=429,
                                 headers={"Retry-After": "7", "X-Internal": "no"})  # fmt: skip

    upstream = web.Application()
    upstream.router.add_get("/v3/token", busy)
    up_runner = web.AppRunner(upstream)
    await up_runner.setup()
    up_site = web.TCPSite(up_runner, "127.0.0.1", 0)
    await up_site.start()
    up_port = int(up_site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    app = build_app(cp_settings(upstream_streaming_url=f"ws://127.0.0.1:{up_port}/v3/ws"))
    runner = web.AppRunner(app, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port}/v3/token?expires_in_seconds=60"
            async with http.get(url, headers={"Authorization": "k"}) as resp:
                assert resp.status == 429
                assert resp.headers["Retry-After"] == "7"
                assert "X-Internal" not in resp.headers
                assert await resp.json() == {"error": "Too many requests"}
        assert seen == [{"auth": "k", "query": "expires_in_seconds=60"}]
    finally:
        await runner.cleanup()
        await up_runner.cleanup()
