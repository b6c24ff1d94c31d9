"""The official AssemblyAI JavaScript SDK 4.41.5 (Node) unchanged, over TLS (it refuses
``ws:``): to the gateway with labels in its base URL and a temporary token minted through the
gateway, straight to the emulator, and one live session driven step by step (its own
``updateConfiguration`` racing pushes, a lock) whose record is checked against the emulator.
``tests/integration/sdk/js`` holds the scripts and the
locked package; the fixture runs ``npm ci`` there when ``node_modules`` is missing."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from controlplane.config import Settings
from emulator.assets import pattern_audio
from emulator.server import build_app as build_emulator
from emulator.settings import EmulatorSettings
from tests.integration.sdk.test_tokens import tls_cp
from tests.integration.sdk.test_upstream_ids import _cli_json
from tests.integration.sdk.truth import record_problems, settle
from tests.integration.service.conftest import Emulator
from tests.support.tls import self_signed

JS = Path(__file__).parent / "js"
pytestmark = pytest.mark.timeout(180)  # the first test may run ``npm ci`` (a few seconds)
AUDIO = base64.b64encode(pattern_audio([("speech", 1000), ("silence", 1600)])).decode()


@pytest.fixture(scope="module")
def node() -> str:
    exe = shutil.which("node")
    npm = shutil.which("npm")
    if exe is None or npm is None:
        pytest.fail("node and npm are needed for the JavaScript SDK recipe (Node 18+)")
    if not (JS / "node_modules" / "assemblyai").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS, check=True,
                       capture_output=True, timeout=240)  # fmt: skip
    return exe


async def _run_js(node: str, cert: Path, **cfg: Any) -> dict[str, Any]:
    env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(cert)}
    cfg = {"apiKey": "test-key", "speechModel": "universal-3-5-pro", "audioB64": AUDIO, **cfg}
    proc = await asyncio.create_subprocess_exec(
        node, str(JS / "stream.mjs"), json.dumps(cfg), cwd=JS, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    assert "error" not in result, result.get("error")
    return result


@asynccontextmanager
async def tls_emulator(cert: Path, key: Path) -> AsyncIterator[int]:
    runner = web.AppRunner(build_emulator(EmulatorSettings(pacing_tolerance_ms=5000.0)))
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        yield int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def test_js_sdk_over_tls_to_the_gateway_with_path_labels_and_a_token(
    node: str,
    cp_settings: Callable[..., Settings],
    emulator: Emulator,
    tmp_path: Path,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert, key = self_signed(tmp_path)
    async with tls_cp(cp_settings(tls_cert=cert, tls_key=key)) as cp:
        await cp.publish({"id": "eu", "match": {"labels": {"region": "eu"}},
                          "set": {"keyterms": ["Zephyr"]}})  # fmt: skip
        base = f"127.0.0.1:{cp.port}/labels/region=eu"
        result = await _run_js(node, cert, useToken=True,
                               websocketBaseUrl=f"wss://{base}/v3/ws",
                               streamingBaseUrl=f"https://{base}")  # fmt: skip
        assert result["token_used"] is True  # minted through /labels/region=eu/v3/token
        upstream_id = result["begin"]["id"]
        session = await cp.session(upstream_id)  # found by the id the app got in Begin
        assert session["labels"] == {"region": "eu"}
        assert session["applied"][0]["id"] == "eu"
        finals = [t for t in result["turns"] if t["end_of_turn"]]
        assert finals and "Zephyr" in finals[0]["transcript"]  # the policy's keyterm
        upstream = await emulator.session(upstream_id)
        assert upstream["connect"]["auth"] == "token"
        # the CLI and `audit at` by the same id (the CLI trusts the test certificate)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        code, shown = await _cli_json(cp, capsys, "sessions", "show", upstream_id)
        assert code == 0 and shown["id"] == session["id"]
        at = repr(time.time())
        answer = await cp.call("GET", f"/v1/sessions/{upstream_id}/config-at?at={at}", expect=200)
        assert answer["session_id"] == session["id"]
        assert answer["config"]["keyterms"] == ["Zephyr"]
        code, cli_answer = await _cli_json(cp, capsys, "audit", "at", upstream_id, at)
        assert code == 0 and cli_answer["session_id"] == session["id"]
        assert cli_answer["config"] == answer["config"]


async def test_js_sdk_over_tls_to_the_emulator(node: str, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    async with tls_emulator(cert, key) as port:
        result = await _run_js(node, cert, websocketBaseUrl=f"wss://127.0.0.1:{port}/v3/ws")
    assert result["begin"]["type"] == "Begin"
    assert any(t["end_of_turn"] for t in result["turns"])


class JsSession:
    """``js/session.mjs``: the SDK in one live session, driven one command at a time."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []

    async def next(self, kind: str) -> dict[str, Any]:
        """The next event of ``kind`` (the events before it are kept in ``events``)."""
        assert self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), 15)
            assert line, f"session.mjs ended before a {kind!r} event: {self.events}"
            event = json.loads(line)
            self.events.append(event)
            assert event["event"] != "failed", event["error"]
            if event["event"] == kind:
                return dict(event)

    async def command(self, **body: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(body) + "\n").encode())
        await self.proc.stdin.drain()


@asynccontextmanager
async def js_session(node: str, cert: Path, base_url: str) -> AsyncIterator[JsSession]:
    cfg = {"apiKey": "test-key", "speechModel": "universal-3-5-pro", "websocketBaseUrl": base_url}
    proc = await asyncio.create_subprocess_exec(
        node, str(JS / "session.mjs"), json.dumps(cfg), cwd=JS,
        env={**os.environ, "NODE_EXTRA_CA_CERTS": str(cert)}, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield JsSession(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_js_sdk_session_record_equals_the_upstream_through_its_own_updates_and_pushes(
    node: str, cp_settings: Callable[..., Settings], emulator: Emulator, tmp_path: Path
) -> None:
    """The SDK's ``updateConfiguration`` racing policy pushes mid-stream, then against a
    lock: after each step the record equals what the emulator runs, and the SDK sees only
    its own protocol's events (one Warning: the one its locked update drew)."""
    cert, key = self_signed(tmp_path)
    async with tls_cp(cp_settings(tls_cert=cert, tls_key=key)) as cp:
        eu = {"id": "eu", "match": {"labels": {"region": "eu"}},
              "set": {"keyterms": ["Zephyr"], "max_turn_silence_ms": 2000}}  # fmt: skip
        await cp.publish(eu)
        base = f"wss://127.0.0.1:{cp.port}/labels/region=eu/v3/ws"
        async with js_session(node, cert, base) as js:
            upstream_id = (await js.next("begin"))["id"]

            async def truthful(step: str) -> None:
                await settle(cp, emulator, upstream_id)
                problems = await record_problems(cp, emulator, upstream_id)
                assert not problems, f"after {step}: {problems}"

            await truthful("connect")
            await asyncio.gather(
                js.command(op="update", config={"keyterms_prompt": ["Mine"], "vad_threshold": 0.5}),
                cp.publish({**eu, "set": {"keyterms": ["Yak"], "max_turn_silence_ms": 2400}}),
            )
            await js.next("updated")
            await truthful("an SDK update racing a push")
            await cp.publish({"id": "lock", "match": {"labels": {"region": "eu"}},
                              "set": {"max_turn_silence_ms": 3000}, "priority": 10,
                              "lock": ["max_turn_silence_ms"]}, token="tok-compliance")  # fmt: skip
            await truthful("a lock")
            await js.command(op="update", config={"max_turn_silence": 500, "vad_threshold": 0.7})
            warning = await js.next("warning")
            assert warning["code"] == 3010 and "max_turn_silence" in warning["warning"]
            await truthful("a locked SDK update")
            config = (await emulator.session(upstream_id))["config"]
            assert (config["max_turn_silence"], config["vad_threshold"]) == (3000, 0.7)
            await js.command(op="close")
            await js.next("done")
        kinds = {e["event"] for e in js.events}
        assert kinds <= {"begin", "updated", "turn", "warning", "close", "done"}, js.events
        assert [e for e in js.events if e["event"] == "warning"] == [warning]
