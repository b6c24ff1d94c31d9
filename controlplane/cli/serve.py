"""``controlplane serve``: flags ↔ ``CONTROLPLANE_*`` settings, then run the app.

With no API token configured anywhere, a fresh admin token is generated, printed once, and
the service binds to 127.0.0.1 only, so a quick start is never an open door.
``--nats-url`` (optionally with ``--redis-url``) runs the distributed mode
(docs/distributed.md); ``--redis-url`` alone is refused with the reason.
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
from controlplane.app import DRAIN_ON_SIGNALS, build_app
from controlplane.cluster.nats_bus import redact
from controlplane.config import Settings, SettingsError, parse_listen
from controlplane.errors import ControlPlaneError
from controlplane.tls import tls_context

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
    ("--credential-labels-file", "credential_labels_file", Path,
     "lines '<sha256 of an API key> k=v,k=v': labels for the gateway sessions of that key"),
    ("--tls-cert", "tls_cert", Path, "PEM certificate (chain): serve https:// and wss://"),
    ("--tls-key", "tls_key", Path, "PEM private key of --tls-cert"),
    ("--shutdown-grace-s", "shutdown_grace_s", float, "seconds live sessions may finish"),
    ("--ack-timeout-s", "ack_timeout_s", float, "Voice Agent acknowledgement timeout"),
    ("--agent-partial-updates", "agent_partial_updates", str,
     "what the Voice Agent upstream does with the rest of a session.update refused in part: "
     "reject_message (default) or apply_rest"),
    ("--nats-creds", "nats_creds", Path, "NATS .creds file (JWT + nkey seed)"),
    ("--nats-nkey", "nats_nkey", Path, "NATS nkey seed file"),
    ("--nats-ping-interval-s", "nats_ping_interval_s", float,
     "PING NATS this often; 2 unanswered tear the connection down (default 2)"),
    ("--heartbeat-interval-s", "heartbeat_interval_s", float, "replica heartbeat period"),
    ("--session-ttl-s", "session_ttl_s", float,
     "a replica silent this long is lost; its sessions end (node_lost)"),
    ("--redis-prefix", "redis_prefix", str, "Redis key prefix (default cp:)"),
    ("--redis-pool-size", "redis_pool_size", int,
     "connections per Redis client; busy ones are waited for (default 50)"),
    ("--redis-pool-timeout-s", "redis_pool_timeout_s", float,
     "how long a command waits for a free Redis connection (default 10)"),
    ("--nats-subject-prefix", "nats_subject_prefix", str, "NATS subject prefix (default cp)"),
    ("--nats-policy-stream", "nats_policy_stream", str, "policy stream (default CP_POLICY)"),
    ("--nats-audit-stream", "nats_audit_stream", str, "audit stream (default CP_AUDIT)"),
    ("--nats-replicas", "nats_replicas", int, "replicas of created streams (default 1)"),
    ("--audit-max-age-days", "audit_max_age_days", float, "CP_AUDIT retention (default 400)"),
    ("--audit-signing-key", "audit_signing_key_file", Path,
     "Ed25519 key (PEM or base64) signing audit checkpoints (default: created under "
     "DATA_DIR/keys/)"),
    ("--audit-checkpoint-entries", "audit_checkpoint_entries", int,
     "a signed audit checkpoint every N entries (default 1000)"),
    ("--audit-checkpoint-interval-s", "audit_checkpoint_interval_s", float,
     "... or every T seconds (default 10)"),
    ("--policy-signing-key-file", "policy_signing_key_file", Path,
     "HMAC keys (comma/newline-separated; first signs) that policy events must be signed "
     "with; or the keys in CONTROLPLANE_POLICY_SIGNING_KEY"),
    ("--policy-unsigned-through-seq", "policy_unsigned_through_seq", int,
     "policy events up to this stream sequence predate signing and apply unsigned"),
    ("--readiness-stall-s", "readiness_stall_s", float,
     "/readyz is 503 when policy intake or audit shipping is stuck this long (default 6)"),
    ("--readiness-lag-s", "readiness_lag_s", float,
     "/readyz is 503 when policy events stay pending this long (default 10)"),
    ("--first-message-timeout-s", "first_message_timeout_s", float,
     "a socket's first frame (register, session.update, audio) must come within this "
     "(default 10)"),
    ("--max-connections", "max_connections", int,
     "gateway + control sockets per replica; more are refused 503 (default 20000)"),
    ("--client-update-burst", "client_update_burst", int,
     "client configuration updates a session may send at once (default 10)"),
    ("--client-update-rate-per-s", "client_update_rate_per_s", float,
     "... and per second sustained (default 1)"),
)  # fmt: skip


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="run the control plane (embedded defaults without --nats-url/--redis-url)",
        description="Each flag also reads CONTROLPLANE_<NAME> (e.g. CONTROLPLANE_LISTEN); "
        "flags win. CONTROLPLANE_TOKENS holds comma-separated role:token pairs; "
        "CONTROLPLANE_POLICY_SIGNING_KEY comma-separated policy signing keys.",
    )
    for flag, dest, kind, text in FLAGS:
        env = "CONTROLPLANE_" + dest.upper()
        convert = _ascii_number(kind) if kind in (int, float) else kind
        parser.add_argument(flag, dest=dest, type=convert, help=f"{text} (env {env})")
    parser.add_argument(
        "--websocket-compression", action="store_true", default=None,
        help="negotiate permessage-deflate (off by default: 2x fan-out time, 3x memory)",
    )  # fmt: skip
    parser.add_argument(
        "--require-reason-for-locks", action="store_true", default=None,
        help="publish, rollback and retire of a policy with lock need a reason "
        "(env CONTROLPLANE_REQUIRE_REASON_FOR_LOCKS)",
    )  # fmt: skip
    parser.set_defaults(func=run)
    return parser


def _ascii_number(kind: type) -> Any:
    """``int`` / ``float`` for a flag, ASCII digits only (both also read '１０')."""

    def convert(raw: str) -> Any:
        if not raw.isascii():
            raise argparse.ArgumentTypeError(f"{raw!r} is not a valid {kind.__name__}")
        return kind(raw)

    convert.__name__ = kind.__name__
    return convert


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {dest: getattr(args, dest, None) for _, dest, _, _ in FLAGS}
    overrides["websocket_compression"] = getattr(args, "websocket_compression", None)
    overrides["require_reason_for_locks"] = getattr(args, "require_reason_for_locks", None)
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
    try:
        settings.check()
    except SettingsError as exc:
        print(f"controlplane: {exc}", file=sys.stderr)
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
    _raise_open_files_limit()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    tls = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        tls = tls_context(settings.tls_cert, settings.tls_key)  # checked above
    scheme = "https" if tls is not None else "http"
    print(f"controlplane serving on {scheme}://{host}:{port} (node {settings.node_id}, "
          f"data {settings.data_dir}, {_mode(settings)})", flush=True)  # fmt: skip
    app = build_app(settings)
    app[DRAIN_ON_SIGNALS] = True
    try:
        web.run_app(
            app, host=host, port=port, print=None, ssl_context=tls,
            shutdown_timeout=settings.shutdown_grace_s + 5.0, access_log=None,
        )  # fmt: skip
    except ControlPlaneError as exc:  # e.g. NATS unreachable at start: say so, no traceback
        print(f"controlplane: cannot start: {exc.message}", file=sys.stderr, flush=True)
        return 1
    return 0


# The version log's writer thread needs the GIL back after each system call (write,
# fdatasync) of a group commit; with the default 5 ms interval the event loop, busy with a
# fan-out, kept it waiting ~5 ms each time: a 0.3 ms commit took ~20 ms, and the frames
# waiting on it as long (docs/benchmarks.md). Only threads waiting for the GIL are affected.
GIL_SWITCH_INTERVAL_S = 0.0005


def _mode(settings: Settings) -> str:
    if not settings.nats_url:
        return "embedded mode"
    where = f"NATS {redact(settings.nats_url)}"
    if settings.redis_url:
        return f"distributed mode: {where}, Redis {redact(settings.redis_url)}"
    return f"distributed mode: {where}, registry local to this replica"


def _raise_open_files_limit() -> None:
    """Two sockets per gateway session: lift the soft RLIMIT_NOFILE to the hard limit."""
    try:
        import resource
    except ImportError:  # not on every platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            logging.getLogger(__name__).warning("could not raise the open-files limit")


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # not on every platform; the default loop works, with more memory
        return
    uvloop.install()
