"""No secret leaks: the admin token, the upstream API key (``Authorization: <key>`` on /v3/ws,
``Bearer <key>`` on /v1/ws), a temporary upstream token (``?token=`` on /v3/ws) and the
credentials of failed attempts never appear in the logs (captured at DEBUG, every logger of the
process), in a version-log entry (REST and the JSONL files under the data dir), in ``/metrics``
or in an API response.

Sessions, pushes, locked-field rejections, bad-token attempts, an upstream that refuses the key,
an unreachable upstream and a request line aiohttp refuses are all exercised. The servers run
like ``controlplane serve`` runs them: without aiohttp's access log (``serve.py``
``access_log=None``; an access log prints every query string, ``?token=`` included).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from controlplane.app import SERVICE, build_app
from controlplane.config import Settings
from emulator.server import build_app as build_emulator
from emulator.settings import EmulatorSettings
from tests.integration.service.conftest import eventually

ADMIN = "adm-" + secrets.token_hex(16)
VIEWER = "vwr-" + secrets.token_hex(16)
UPSTREAM_KEY = "upk-" + secrets.token_hex(16)
WRONG_TOKEN = "bad-" + secrets.token_hex(16)  # a mistyped token is often almost a real one
WRONG_KEY = "wrk-" + secrets.token_hex(16)
STREAM = "/v3/ws?sample_rate=16000&speech_model=universal-3-5-pro"
LOCKED = "This call is recorded."


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, shutdown_timeout=5, access_log=None)  # as serve.py runs it
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


@dataclass
class Stage:
    cp: str
    emulator: str
    http: aiohttp.ClientSession
    data_dir: Path
    seen: list[str] = field(default_factory=list)  # every response body and close reason

    @property
    def ws(self) -> str:
        return self.cp.replace("http", "ws", 1)

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = ADMIN,
        headers: dict[str, str] | None = None,
        body: Any = None,
    ) -> tuple[int, str]:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        async with self.http.request(method, self.cp + path, json=body, headers=sent) as resp:
            text = await resp.text()
        self.seen.append(text)
        return resp.status, text

    async def frames(
        self, ws: aiohttp.ClientWebSocketResponse, *, until: str | None = None, timeout: float = 0.3
    ) -> list[dict[str, Any]]:
        """Frames until one of type ``until`` (or the socket closes, or ``timeout`` of quiet)."""
        out: list[dict[str, Any]] = []
        while True:
            try:
                msg = await ws.receive(timeout=timeout if until is None else 5)
            except TimeoutError:
                return out
            if msg.type != aiohttp.WSMsgType.TEXT:
                self.seen.append(f"close {ws.close_code} {msg.extra}")
                return out
            self.seen.append(msg.data)
            out.append(json.loads(msg.data))
            if until is not None and out[-1].get("type") == until:
                return out


@pytest.fixture
async def stage(tmp_path: Path) -> AsyncIterator[Stage]:
    emulator = build_emulator(
        EmulatorSettings(api_keys=frozenset({UPSTREAM_KEY}), pacing_tolerance_ms=5000.0)
    )
    emu_runner, emu_port = await _serve(emulator)
    settings = Settings(
        listen="127.0.0.1:0",
        data_dir=tmp_path / "data",
        node_id="node-leak",
        tokens={ADMIN: "admin", VIEWER: "viewer"},
        shutdown_grace_s=0.2,
        upstream_streaming_url=f"ws://127.0.0.1:{emu_port}/v3/ws",
        upstream_agent_url=f"ws://127.0.0.1:{emu_port}/v1/ws",
    )
    app = build_app(settings)
    runner, port = await _serve(app)
    try:
        async with aiohttp.ClientSession() as http:
            yield Stage(
                f"http://127.0.0.1:{port}", f"http://127.0.0.1:{emu_port}", http, settings.data_dir
            )
        app[SERVICE].draining = True
    finally:
        await runner.cleanup()
        await emu_runner.cleanup()


async def _temporary_token(stage: Stage) -> str:
    url = stage.emulator + "/v3/token?expires_in_seconds=60"
    async with stage.http.get(url, headers={"Authorization": UPSTREAM_KEY}) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["token"])


async def _scenario(stage: Stage, temp_token: str) -> None:
    # REST: a locking policy, reads, failed authentication in every shape
    status, _ = await stage.call(
        "POST",
        "/v1/policies",
        body={"id": "disclosure", "set": {"prompt": LOCKED}, "lock": ["prompt"]},
    )
    assert status == 201
    for token, headers in [
        (WRONG_TOKEN, None),
        (None, {"Authorization": f"Token {ADMIN}"}),
        (None, {"Authorization": ADMIN}),
        (ADMIN + "x", None),
        (VIEWER, None),
    ]:
        status, _ = await stage.call(
            "POST", "/v1/policies", token=token, headers=headers, body={"id": "nope", "set": {}}
        )
        assert status in (401, 403)
    assert (await stage.call("GET", f"/v1/sessions?token={ADMIN}"))[0] == 400
    assert (await stage.call("GET", "/v1/policies/disclosure"))[0] == 200

    # control channel: ?token= and the header; a refused registration
    async with stage.http.ws_connect(f"{stage.ws}/v1/control?token={ADMIN}") as ws:
        await ws.send_json(
            {
                "type": "register",
                "kind": "streaming-v3",
                "model": "u3-rt-pro",
                "config": {"prompt": "mine"},
            }
        )
        await stage.frames(ws, until="push")
        await ws.send_json({"type": "update", "config": {"prompt": "override"}})  # locked
        await stage.frames(ws, until="update_result")
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await stage.http.ws_connect(f"{stage.ws}/v1/control?token={WRONG_TOKEN}")

    # gateway, streaming: raw key, then a temporary token in the query; locked-field updates
    for url, headers in [
        (stage.ws + STREAM, {"Authorization": UPSTREAM_KEY}),
        (f"{stage.ws}{STREAM}&token={temp_token}", {}),
    ]:
        async with stage.http.ws_connect(
            url, headers={**headers, "X-Session-Labels": "tier=gold"}
        ) as ws:
            await stage.frames(ws, until="Begin")
            await ws.send_json(
                {"type": "UpdateConfiguration", "prompt": "override", "keyterms_prompt": ["acme"]}
            )
            await ws.send_json({"type": "UpdateConfiguration", "prompt": "x", "vad_threshold": "?"})
            await stage.frames(ws)
    # gateway, voice agent: Bearer key; a locked field in an update
    async with stage.http.ws_connect(
        stage.ws + "/v1/ws", headers={"Authorization": f"Bearer {UPSTREAM_KEY}"}
    ) as ws:
        await ws.send_json({"type": "session.update", "session": {"system_prompt": "hi"}})
        await stage.frames(ws, until="session.ready")
        await ws.send_json(
            {"type": "session.update", "session": {"input": {"transcription_prompt": "override"}}}
        )
        await ws.send_json({"type": "session.update", "session": {"system_prompt": "again"}})
        await stage.frames(ws, until="session.updated")
    # the upstream refuses a wrong key (relayed); a request line aiohttp refuses
    for url, headers in [
        (stage.ws + STREAM, {"Authorization": WRONG_KEY}),
        (stage.ws + "/v1/ws", {"Authorization": f"Bearer {WRONG_KEY}"}),
    ]:
        try:
            async with stage.http.ws_connect(url, headers=headers) as ws:
                await ws.send_json({"type": "session.update", "session": {}})
                await stage.frames(ws)
        except aiohttp.WSServerHandshakeError as exc:
            stage.seen.append(str(exc.message))
    long_line = f"/v3/ws?token={temp_token}&sample_rate=16000&pad={'a' * 9000}"
    async with stage.http.get(stage.cp + long_line, headers={"Authorization": UPSTREAM_KEY}) as r:
        assert r.status == 400  # aiohttp's own plain-text answer echoes the line to its sender

    # errors on the REST side: unknown session, bad JSON, a refused relabel
    for method, path, body in [
        ("GET", "/v1/sessions/nope/log", None),
        ("PATCH", "/v1/sessions/nope/labels", {"labels": {"k": 1}}),
        ("POST", "/v1/policies", {"id": "bad", "set": {"prompt": 5}}),
    ]:
        assert (await stage.call(method, path, body=body))[0] >= 400


def _log_text(records: list[logging.LogRecord]) -> str:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(formatter.format(r) + repr(r.__dict__.get("args")) for r in records)


async def test_no_secret_reaches_a_log_an_audit_entry_the_metrics_or_a_response(
    stage: Stage, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    temp_token = await _temporary_token(stage)
    await _scenario(stage, temp_token)

    # unreachable upstream: the gateway's warning names the error, never the URL's query
    unreachable = Settings(
        listen="127.0.0.1:0",
        data_dir=tmp_path / "other",
        node_id="n2",
        tokens={ADMIN: "admin"},
        shutdown_grace_s=0.2,
        upstream_streaming_url="ws://127.0.0.1:9/v3/ws",
        upstream_agent_url="ws://127.0.0.1:9/v1/ws",
    )
    runner, port = await _serve(build_app(unreachable))
    try:
        url = f"ws://127.0.0.1:{port}{STREAM}&token={temp_token}"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await stage.http.ws_connect(url, headers={"Authorization": UPSTREAM_KEY})
        assert refused.value.status == 502
    finally:
        await runner.cleanup()

    sessions = json.loads((await stage.call("GET", "/v1/sessions?state=ended&limit=1000"))[1])
    ids = [s["id"] for s in sessions["items"]]
    assert len(ids) >= 5, "control channel, 2 streaming and 1 agent session, and the refused"
    audit = []
    for sid in ids:
        audit.append((await stage.call("GET", f"/v1/sessions/{sid}/log"))[1])
    assert any("rejected" in entry for entry in audit), "a locked-field rejection was logged"
    files = sorted(p for p in (stage.data_dir.parent).rglob("*") if p.is_file())
    assert files, "the version log wrote its JSONL files"
    on_disk = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)
    metrics = (await stage.call("GET", "/metrics", token=None))[1]
    await eventually(lambda: True)

    places = {
        "logs": _log_text(caplog.records),
        "version log (REST)": "\n".join(audit),
        "version log (files)": on_disk,
        "metrics": metrics,
        "responses": "\n".join(stage.seen),
    }
    assert "rejected" in places["version log (files)"]
    for name, secret in [
        ("admin token", ADMIN),
        ("viewer token", VIEWER),
        ("upstream key", UPSTREAM_KEY),
        ("temporary token", temp_token),
        ("wrong token", WRONG_TOKEN),
        ("wrong key", WRONG_KEY),
    ]:
        for fragment in {secret[i : i + 16] for i in range(len(secret) - 15)}:  # or a part
            for place, text in places.items():
                assert fragment not in text, f"the {name} leaked into the {place}"
