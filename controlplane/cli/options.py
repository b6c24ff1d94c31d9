"""What every client command shares: the ``--url`` / ``--token`` / ``--timeout`` / ``--json``
options, the argument types, and how a handler gets its REST client."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from controlplane.cli.http import DEFAULT_URL, ControlPlaneClient

__all__ = ["Handler", "add_command", "client_for", "client_options", "positive", "seconds"]

Handler = Callable[[argparse.Namespace, ControlPlaneClient], int]


def client_for(args: argparse.Namespace) -> ControlPlaneClient:
    url = args.url or os.environ.get("CONTROLPLANE_URL") or DEFAULT_URL
    token = args.token or os.environ.get("CONTROLPLANE_TOKEN") or None
    return ControlPlaneClient(url, token, timeout_s=args.timeout or 30.0)


def _with_client(handler: Handler) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return handler(args, client_for(args))

    return run


def client_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("server")
    group.add_argument("--url", help=f"base URL (env CONTROLPLANE_URL, default {DEFAULT_URL})")
    group.add_argument("--token", help="bearer token (env CONTROLPLANE_TOKEN, preferred)")
    group.add_argument("--timeout", type=seconds, help="seconds per request (default 30); "
                       "with --wait, the whole wait (default 300)")  # fmt: skip
    group.add_argument("--json", dest="as_json", action="store_true", help="print JSON")
    return common


def add_command(group: Any, name: str, handler: Handler | None, text: str) -> Any:
    """A client command ``name`` in ``group`` (an argparse sub-parsers action) with the shared
    options; ``handler`` runs with a client (None: the caller sets ``func`` itself)."""
    parser = group.add_parser(name, parents=[client_options()], help=text, description=text)
    if handler is not None:
        parser.set_defaults(func=_with_client(handler))
    return parser


def positive(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value!r}")
    return int(value)


def seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not 0.1 <= number <= 86400:
        raise argparse.ArgumentTypeError(f"must be seconds from 0.1 to 86400, got {value!r}")
    return number
