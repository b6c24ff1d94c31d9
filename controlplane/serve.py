"""``controlplane serve``: flags ↔ ``CONTROLPLANE_*`` settings, then run the app.

With no API token configured anywhere, a fresh admin token is generated, printed once, and
the service binds to 127.0.0.1 only, so a quick start is never an open door.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from controlplane.api.auth import generate_admin_token
from controlplane.app import build_app
from controlplane.config import Settings, parse_listen

__all__ = ["register", "run", "settings_from_args"]

FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--listen", "listen", str, "host:port (default 127.0.0.1:8080)"),
    ("--upstream-streaming-url", "upstream_streaming_url", str, "Streaming v3 upstream"),
    ("--upstream-agent-url", "upstream_agent_url", str, "Voice Agent upstream"),
    ("--nats-url", "nats_url", str, "NATS JetStream URL (distributed mode)"),
    ("--redis-url", "redis_url", str, "Redis URL (distributed mode)"),
    ("--node-id", "node_id", str, "this replica's id (default: hostname)"),
    ("--data-dir", "data_dir", Path, "audit JSONL files go under DATA_DIR/audit"),
    ("--tokens-file", "tokens_file", Path, "file of role:token lines"),
    ("--shutdown-grace-s", "shutdown_grace_s", float, "seconds live sessions may finish"),
    ("--ack-timeout-s", "ack_timeout_s", float, "Voice Agent acknowledgement timeout"),
)


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="run the control plane (embedded defaults without --nats-url/--redis-url)",
        description="Each flag also reads CONTROLPLANE_<NAME> (e.g. CONTROLPLANE_LISTEN); "
        "flags win. CONTROLPLANE_TOKENS holds comma-separated role:token pairs.",
    )
    for flag, dest, kind, text in FLAGS:
        env = "CONTROLPLANE_" + dest.upper()
        parser.add_argument(flag, dest=dest, type=kind, help=f"{text} (env {env})")
    parser.add_argument(
        "--websocket-compression", action="store_true", default=None,
        help="negotiate permessage-deflate (off by default: 2x fan-out time, 3x memory)",
    )  # fmt: skip
    parser.set_defaults(func=run)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {dest: getattr(args, dest, None) for _, dest, _, _ in FLAGS}
    overrides["websocket_compression"] = getattr(args, "websocket_compression", None)
    return Settings.from_env(**overrides)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if settings.nats_url or settings.redis_url:
        print(
            "controlplane: distributed mode (--nats-url / --redis-url) is not available in "
            "this build yet; run without them for the embedded defaults",
            file=sys.stderr,
        )
        return 2
    host, port = parse_listen(settings.listen)
    if not settings.all_tokens():
        token = generate_admin_token()
        settings = dataclasses.replace(settings, tokens={token: "admin"})
        print("No API tokens configured (CONTROLPLANE_TOKENS / --tokens-file).", flush=True)
        print(f"Generated an admin token for this run, shown once:\n  {token}", flush=True)
        if not _loopback(host):
            print(f"Refusing to listen on {host} without configured tokens: binding to "
                  "127.0.0.1 only.", flush=True)  # fmt: skip
            host = "127.0.0.1"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    _install_uvloop()
    print(f"controlplane serving on http://{host}:{port} (node {settings.node_id}, "
          f"data {settings.data_dir})", flush=True)  # fmt: skip
    web.run_app(
        build_app(settings), host=host, port=port, print=None,
        shutdown_timeout=settings.shutdown_grace_s + 5.0, access_log=None,
    )  # fmt: skip
    return 0


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # not on every platform; the default loop works, with more memory
        return
    uvloop.install()
