"""The in-process emulator and control plane of the service suite, plus a factory for a
control plane with other settings (``tests.integration.service.conftest``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import aiohttp
import pytest

from controlplane.app import SERVICE, build_app
from controlplane.config import Settings
from tests.integration.service.conftest import (  # noqa: F401
    ControlPlaneUnderTest,
    _serve,
    cp,
    cp_settings,
    emulator,
)

ControlPlaneFactory = Callable[..., AbstractAsyncContextManager[ControlPlaneUnderTest]]


@pytest.fixture
def cp_factory(cp_settings: Callable[..., Settings]) -> ControlPlaneFactory:  # noqa: F811
    """``async with cp_factory(max_client_message_bytes=...) as cp:`` — a control plane with
    settings overridden, served like the ``cp`` fixture."""

    @asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[ControlPlaneUnderTest]:
        settings = cp_settings(**overrides)
        app = build_app(settings)
        runner, port = await _serve(app)
        try:
            async with aiohttp.ClientSession() as http:
                yield ControlPlaneUnderTest(port, http, app[SERVICE], settings.data_dir)
        finally:
            await runner.cleanup()

    return make
