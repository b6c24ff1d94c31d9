"""The in-process emulator and control plane of the service suite, for the fuzzers that need
a running server (``tests.integration.service.conftest``)."""

from tests.integration.service.conftest import cp, cp_settings, emulator  # noqa: F401
