"""``controlplane`` console script."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from aiohttp import web

from controlplane.app import build_app
from controlplane.config import Settings, parse_listen
from emulator.cli import register as register_emulator

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    settings = Settings.from_env(listen=args.listen, node_id=args.node_id)
    host, port = parse_listen(settings.listen)
    print(f"controlplane serving on http://{host}:{port} (node {settings.node_id})", flush=True)
    web.run_app(build_app(settings), host=host, port=port, print=None)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="controlplane", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the control plane (embedded defaults without URLs)")
    serve.add_argument(
        "--listen", help="host:port (env CONTROLPLANE_LISTEN, default 127.0.0.1:8080)"
    )
    serve.add_argument("--node-id", help="this replica's id (env CONTROLPLANE_NODE_ID)")
    serve.set_defaults(func=_serve)
    register_emulator(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ValueError as exc:
        print(f"controlplane: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
