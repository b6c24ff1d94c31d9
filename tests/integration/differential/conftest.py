"""The differential test runs one control plane (embedded mode) on the in-process emulator:
the service suite's fixtures."""

from tests.integration.service.conftest import cp, cp_settings, emulator

__all__ = ["cp", "cp_settings", "emulator"]
