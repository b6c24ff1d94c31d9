"""Errors raised by the emulator's own configuration surfaces (settings, fault knobs).

Tree::

    EmulatorError              root (a ValueError: bad input from an operator or a test)
    ├── InvalidSetting         a setting / flag / EMULATOR_* variable has a bad value
    └── InvalidFaults          a fault-knob document (POST /_emulator/.../faults) is malformed

Protocol violations by a connected client are *not* exceptions: the sans-I/O session machines
answer them with wire messages and close actions, exactly as the real service would.
"""

from __future__ import annotations

__all__ = ["EmulatorError", "InvalidFaults", "InvalidSetting"]


class EmulatorError(ValueError):
    """Root of the emulator's errors; permanent (retrying the same input fails the same way)."""

    retryable = False


class InvalidSetting(EmulatorError):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"setting {name}: {message}")
        self.name = name


class InvalidFaults(EmulatorError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"faults.{field}: {message}")
        self.field = field
