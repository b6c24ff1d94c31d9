"""The differential test runs one control plane (embedded mode) on the in-process emulator:
the service suite's fixtures, with a 1 s acknowledgement timeout (answers after it: late)."""

from collections.abc import AsyncIterator, Callable

import pytest

from controlplane.config import Settings
from tests.integration.service.conftest import (
    ControlPlaneUnderTest,
    cp_settings,
    emulator,
    serving,
)

__all__ = ["cp", "cp_settings", "emulator"]

ACK_TIMEOUT_S = 1.0  # test_differential.ACK_TIMEOUT_S


@pytest.fixture
async def cp(cp_settings: Callable[..., Settings]) -> AsyncIterator[ControlPlaneUnderTest]:
    # (no per-token limit on expensive reads: the test reads every session's log and
    # config-at after every step, as an auditor's instrument, not as load)
    async with serving(cp_settings(ack_timeout_s=ACK_TIMEOUT_S, expensive_read_rate_per_s=0)) as cp:
        yield cp
