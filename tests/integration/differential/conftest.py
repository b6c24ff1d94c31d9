"""The differential test runs one control plane (embedded mode) on the in-process emulator:
the service suite's fixtures, with a 1 s acknowledgement timeout (answers after it: late)."""

from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from controlplane.app import SERVICE, build_app
from controlplane.config import Settings
from tests.integration.service.conftest import ControlPlaneUnderTest, _serve, cp_settings, emulator

__all__ = ["cp", "cp_settings", "emulator"]

ACK_TIMEOUT_S = 1.0  # test_differential.ACK_TIMEOUT_S


@pytest.fixture
async def cp(cp_settings: Callable[..., Settings]) -> AsyncIterator[ControlPlaneUnderTest]:
    settings = cp_settings(ack_timeout_s=ACK_TIMEOUT_S)
    app = build_app(settings)
    runner, port = await _serve(app)
    async with aiohttp.ClientSession() as http:
        yield ControlPlaneUnderTest(port, http, app[SERVICE], settings.data_dir)
    await runner.cleanup()
