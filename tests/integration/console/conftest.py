"""One Chromium (Debian's ``chromium`` package, driven by Playwright) and one control plane +
emulator per module, all on the module's event loop (docs/console.md#tests).

No browser is ever downloaded: Playwright launches ``CONSOLE_CHROMIUM`` (default
``/usr/bin/chromium``); when it is missing the tests fail, naming the package to install.
Screenshots go to ``CONSOLE_ARTIFACTS`` (default ``artifacts/console/`` in the repository).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright

from controlplane.app import SERVICE, build_app
from controlplane.config import Settings
from controlplane.edges.client import ControlClient
from emulator.server import build_app as build_emulator
from emulator.settings import EmulatorSettings
from tests.integration.service.conftest import (
    ADMIN,
    TOKENS,
    ControlPlaneUnderTest,
    Emulator,
    _serve,
)

CHROMIUM = Path(os.environ.get("CONSOLE_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(
    os.environ.get("CONSOLE_ARTIFACTS", Path(__file__).resolve().parents[3] / "artifacts/console")
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"the console's browser tests need Chromium at {CHROMIUM}: install Debian's package "
            "(apt-get update && apt-get install -y chromium; .ci/run does it) or set "
            "CONSOLE_CHROMIUM to a Chromium executable. Never `playwright install`."
        )
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def emulator() -> AsyncIterator[Emulator]:
    """The stack's upstream (its inspection and faults API)."""
    runner, port = await _serve(build_emulator(EmulatorSettings(pacing_tolerance_ms=5000.0)))
    try:
        async with aiohttp.ClientSession() as http:
            yield Emulator(port, http)
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, emulator: Emulator
) -> AsyncIterator[ControlPlaneUnderTest]:
    emulator_port = emulator.port
    settings = Settings(
        listen="127.0.0.1:0",
        upstream_streaming_url=f"ws://127.0.0.1:{emulator_port}/v3/ws",
        upstream_agent_url=f"ws://127.0.0.1:{emulator_port}/v1/ws",
        data_dir=tmp_path_factory.mktemp("console") / "data",
        node_id="node-a",
        tokens=TOKENS,
        ack_timeout_s=3.0,
        shutdown_grace_s=0.5,
    )
    app = build_app(settings)
    runner, port = await _serve(app)
    try:
        async with aiohttp.ClientSession() as http:
            yield ControlPlaneUnderTest(port, http, app[SERVICE], settings.data_dir)
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    opened = await context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield opened
    finally:
        await context.close()
    assert not errors, f"the console raised in the browser: {errors}"


async def screenshot(page: Page, name: str) -> None:
    """Keep a full-page screenshot as a CI artifact (docs/console.md#screenshots)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@contextlib.asynccontextmanager
async def acking_clients(
    cp: ControlPlaneUnderTest, n: int, labels: Mapping[str, str], *, delay_s: float = 0.0,
    config: Mapping[str, Any] | None = None, refuse: bool = False,
    session_ids: Sequence[str] = (),
) -> AsyncIterator[list[ControlClient]]:  # fmt: skip
    """``n`` control-channel sessions (and one per id of ``session_ids``) that acknowledge
    every push (after ``delay_s``), or with ``refuse`` report every push refused by the
    upstream."""
    clients = [
        ControlClient(cp.ws_base + "/v1/control", token=ADMIN, kind="voice-agent-v1",
                      model="voice-agent", labels=dict(labels), config=dict(config or {}),
                      session_id=sid)
        for sid in [*([None] * n), *session_ids]
    ]  # fmt: skip

    async def ack(client: ControlClient) -> None:
        async for push in client.pushes():
            await asyncio.sleep(delay_s)
            if refuse:
                await client.failed(push.version, "upstream refused the update")
            else:
                await client.applied(push.version)

    async with contextlib.AsyncExitStack() as stack:
        for client in clients:
            await stack.enter_async_context(client)
        tasks = [asyncio.create_task(ack(c), name="console-acker") for c in clients]
        try:
            yield clients
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
