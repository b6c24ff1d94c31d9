"""Official clients (AssemblyAI Python SDK, raw websockets) against the gateway and emulator
of the service suite (``tests.integration.service.conftest``), plus ``cp_factory``."""

from __future__ import annotations

from tests.integration.security.conftest import cp_factory  # noqa: F401
from tests.integration.service.conftest import cp, cp_settings, emulator  # noqa: F401
