"""``controlplane emulator`` subcommand (registered by controlplane.cli). Placeholder."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "emulator", help="run the local AssemblyAI stand-in upstream"
    )
    parser.add_argument("--listen", default="127.0.0.1:8090", help="host:port")
    return parser
