"""``python -m emulator [flags]``: the same as ``controlplane emulator [flags]``."""

from __future__ import annotations

import sys

from emulator.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
