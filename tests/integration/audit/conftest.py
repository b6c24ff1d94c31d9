"""A real emulator and control planes (as in tests/integration/service) that write signed
checkpoints every 0.2 s; a control plane can be stopped and started again on its data dir."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from controlplane.app import SERVICE, build_app
from controlplane.config import Settings
from tests.integration.distributed.conftest import cluster  # noqa: F401  (fixture)
from tests.integration.service.conftest import (  # noqa: F401  (fixtures used here)
    ControlPlaneUnderTest,
    _serve,
    cp_settings,
    emulator,
)

CHECKPOINT_INTERVAL_S = 0.2


@dataclass
class Stack:
    make_settings: Callable[..., Settings]
    http: aiohttp.ClientSession
    runners: dict[int, web.AppRunner] = field(default_factory=dict)

    async def start(self, **overrides: Any) -> ControlPlaneUnderTest:
        overrides.setdefault("audit_checkpoint_interval_s", CHECKPOINT_INTERVAL_S)
        settings = self.make_settings(**overrides)
        app = build_app(settings)
        runner, port = await _serve(app)
        self.runners[port] = runner
        return ControlPlaneUnderTest(port, self.http, app[SERVICE], settings.data_dir)

    async def stop(self, cp: ControlPlaneUnderTest) -> None:
        runner = self.runners.pop(cp.port, None)
        if runner is not None:
            await runner.cleanup()  # the log's close writes the last checkpoint


@pytest.fixture
async def stack(cp_settings: Callable[..., Settings]) -> AsyncIterator[Stack]:  # noqa: F811
    async with aiohttp.ClientSession() as http:
        s = Stack(cp_settings, http)
        try:
            yield s
        finally:
            for runner in list(s.runners.values()):
                await runner.cleanup()
