"""A real emulator and a real control plane, both on free ports in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from controlplane.app import SERVICE, build_app
from controlplane.config import Settings
from controlplane.service.plane import ControlPlane
from emulator.server import build_app as build_emulator
from emulator.settings import EmulatorSettings
from sessions.clock import FakeClock

TOKENS = {
    "tok-viewer": "viewer",
    "tok-app": "app",
    "tok-experimenter": "experimenter",
    "tok-compliance": "compliance",
    "tok-admin": "admin",
}
ADMIN = "tok-admin"


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None and server.sockets  # type: ignore[union-attr]
    port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, int(port)


@dataclass
class Emulator:
    port: int
    http: aiohttp.ClientSession

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def session(self, upstream_id: str) -> dict[str, Any]:
        async with self.http.get(f"{self.base}/_emulator/sessions/{upstream_id}") as resp:
            assert resp.status == 200, await resp.text()
            return dict(await resp.json())

    async def updates(self, upstream_id: str, kind: str = "UpdateConfiguration") -> list[Any]:
        body = await self.session(upstream_id)
        return [e["message"] for e in body["timeline"] if e["message"].get("type") == kind]

    async def faults(self, upstream_id: str, spec: dict[str, Any]) -> None:
        url = f"{self.base}/_emulator/sessions/{upstream_id}/faults"
        async with self.http.post(url, json=spec) as resp:
            assert resp.status in (200, 204), await resp.text()


@dataclass
class ControlPlaneUnderTest:
    port: int
    http: aiohttp.ClientSession
    service: ControlPlane
    data_dir: Path
    calls: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def call(
        self, method: str, path: str, *, token: str | None = ADMIN, body: Any = None,
        expect: int | None = None,
    ) -> Any:  # fmt: skip
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(method, self.base + path, json=body, headers=headers) as r:
            text = await r.text()
            if expect is not None:
                assert r.status == expect, f"{method} {path}: {r.status} {text}"
            return json.loads(text) if text and r.content_type == "application/json" else text

    async def publish(self, doc: dict[str, Any], token: str = ADMIN) -> dict[str, Any]:
        return dict(await self.call("POST", "/v1/policies", body=doc, token=token, expect=201))

    async def ref(self, policy_id: str, version: int, variant: str | None = None) -> dict[str, Any]:
        """A log entry's ``policies`` item for that version, its digest as the API lists it."""
        body = await self.call("GET", f"/v1/policies/{policy_id}/versions", expect=200)
        (record,) = [v for v in body["items"] if v["version"] == version]
        return {"id": policy_id, "version": version, "variant": variant,
                "digest": record["digest"]}  # fmt: skip

    async def log(self, session_id: str) -> list[dict[str, Any]]:
        """Every entry: the log's pages followed to the end."""
        items: list[dict[str, Any]] = []
        query = "?limit=1000"
        while True:
            body = await self.call("GET", f"/v1/sessions/{session_id}/log{query}", expect=200)
            items.extend(body["items"])
            if body["next"] is None:
                return items
            query = f"?limit=1000&cursor={body['next']}"

    async def session(self, session_id: str) -> dict[str, Any]:
        return dict(await self.call("GET", f"/v1/sessions/{session_id}", expect=200))

    def live_by_upstream(self, upstream_id: str) -> str:
        for sid, ls in self.service.engine.live.items():
            if ls.session.upstream_id == upstream_id:
                return sid
        raise AssertionError(f"no live session with upstream id {upstream_id}")


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    app = build_emulator(EmulatorSettings(pacing_tolerance_ms=5000.0))
    runner, port = await _serve(app)
    async with aiohttp.ClientSession() as http:
        yield Emulator(port, http)
    await runner.cleanup()


@pytest.fixture
def cp_settings(emulator: Emulator, tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "upstream_streaming_url": f"ws://127.0.0.1:{emulator.port}/v3/ws",
            "upstream_agent_url": f"ws://127.0.0.1:{emulator.port}/v1/ws",
            "data_dir": tmp_path / "data",
            "node_id": "node-a",
            "tokens": TOKENS,
            "ack_timeout_s": 3.0,
            "shutdown_grace_s": 0.5,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[ControlPlaneUnderTest]:
    """The control plane on ``settings``, served on a free port until the block ends."""
    app = build_app(settings)
    runner, port = await _serve(app)
    async with aiohttp.ClientSession() as http:
        yield ControlPlaneUnderTest(port, http, app[SERVICE], settings.data_dir)
    await runner.cleanup()


@pytest.fixture
async def clocked_cp(
    cp_settings: Callable[..., Settings],
) -> AsyncIterator[tuple[ControlPlaneUnderTest, FakeClock]]:
    """A control plane on a FakeClock: waves advance only when the test moves the time."""
    clock = FakeClock(start=time.time())
    settings = cp_settings()
    app = build_app(settings, clock=clock)
    runner, port = await _serve(app)
    async with aiohttp.ClientSession() as http:
        yield ControlPlaneUnderTest(port, http, app[SERVICE], settings.data_dir), clock
    await runner.cleanup()


@pytest.fixture
async def cp(cp_settings: Callable[..., Settings]) -> AsyncIterator[ControlPlaneUnderTest]:
    async with serving(cp_settings()) as cp:
        yield cp


async def eventually(check: Callable[[], Any], timeout: float = 5.0, interval: float = 0.05) -> Any:
    """Poll an async or sync check until it returns a truthy value (or raise its last error)."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
        except AssertionError as exc:
            last = exc
        if asyncio.get_running_loop().time() > deadline:
            if last is not None:
                raise last
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
