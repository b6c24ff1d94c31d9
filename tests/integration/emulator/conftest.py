"""Fixtures: the emulator served in-process on port 0, plus small client helpers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from emulator.server import STATE, EmulatorState, build_app
from emulator.settings import EmulatorSettings


@dataclass
class Emulator:
    app: web.Application
    port: int

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def state(self) -> EmulatorState:
        return self.app[STATE]

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as client,
            client.request(method, self.http + path, json=body) as resp,
        ):
            return resp.status, json.loads(await resp.text())

    async def get(self, path: str) -> Any:
        status, body = await self.request("GET", path)
        assert status == 200, body
        return body

    async def post(self, path: str, body: Any) -> Any:
        status, doc = await self.request("POST", path, body)
        assert status == 200, doc
        return doc

    async def session(self, session_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = await self.get(f"/_emulator/sessions/{session_id}")
        return doc


StartEmulator = Callable[..., Awaitable[Emulator]]


@pytest.fixture
async def start_emulator() -> AsyncIterator[StartEmulator]:
    runners: list[web.AppRunner] = []

    async def start(**overrides: Any) -> Emulator:
        app = build_app(EmulatorSettings(**overrides))
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = int(runner.addresses[0][1])
        return Emulator(app, port)

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
async def emulator(start_emulator: StartEmulator) -> Emulator:
    return await start_emulator()


@pytest.fixture
async def fast_emulator(start_emulator: StartEmulator) -> Emulator:
    """Pacing check off, so tests may send audio faster than real time."""
    return await start_emulator(pacing_tolerance_ms=float("inf"))
