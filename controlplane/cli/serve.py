"""``controlplane serve``: settings from flags and ``CONTROLPLANE_*``, then run the app.

With no API token configured anywhere, a fresh admin token is generated, printed once, and
the service binds to 127.0.0.1 only, so a quick start is never an open door.
``--nats-url`` (optionally with ``--redis-url``) runs the distributed mode
(docs/distributed.md); ``--redis-url`` alone is refused with the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import gc
import ipaddress
import logging
import os
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from controlplane.api.auth import generate_admin_token
from controlplane.app import DRAIN_ON_SIGNALS, build_app
from controlplane.cli.datadir import DataDirLock, keep_locked
from controlplane.cluster.nats_bus import redact
from controlplane.config import Settings, SettingsError, add_flags, flag_values, parse_listen
from controlplane.errors import ControlPlaneError
from controlplane.tls import tls_context
from sessions import native

__all__ = ["register", "run", "settings_from_args"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="run the control plane (embedded defaults without --nats-url/--redis-url)",
        description="Every setting is a flag and a CONTROLPLANE_<NAME> variable (e.g. "
        "--listen / CONTROLPLANE_LISTEN); flags win over variables, which win over defaults. "
        "Secrets are variables only: CONTROLPLANE_TOKENS (comma-separated role:token pairs), "
        "CONTROLPLANE_POLICY_SIGNING_KEY. All settings: docs/configuration.md.",
        allow_abbrev=False,  # `--tokens admin:…` must not be taken for --tokens-file
    )
    add_flags(parser)
    parser.set_defaults(func=run)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Defaults < ``CONTROLPLANE_*`` < the flags given; SettingsError names a bad value's origin."""
    return Settings.from_env(flags=flag_values(args))


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
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
    gc.set_threshold(*GC_THRESHOLDS)
    tls = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        tls = tls_context(settings.tls_cert, settings.tls_key)  # checked above
    scheme = "https" if tls is not None else "http"
    banner = (f"controlplane serving on {scheme}://{host}:{port} (node {settings.node_id}, "
              f"data dir {settings.data_dir}, {_mode(settings)})")  # fmt: skip
    try:
        _prepare_data_dir(settings.data_dir)
        lock = DataDirLock(settings.data_dir)  # held until the process exits
        app = build_app(settings)
        app.cleanup_ctx.append(keep_locked(lock))  # (it follows a disk remounted under it)
        app[DRAIN_ON_SIGNALS] = True
        web.run_app(  # the banner once the socket listens, not before
            app, host=host, port=port, print=lambda _: print(f"{banner}, {_build()}", flush=True),
            ssl_context=tls, shutdown_timeout=settings.shutdown_grace_s + 5.0, access_log=None,
        )  # fmt: skip
    except ControlPlaneError as exc:  # e.g. NATS unreachable at start: say so, no traceback
        print(f"controlplane: cannot start: {exc.message}", file=sys.stderr, flush=True)
        return 1
    except OSError as exc:  # the port taken, a data dir that cannot be written, ...
        print(f"controlplane: cannot start: {_os_problem(exc, host, port)}", file=sys.stderr,
              flush=True)  # fmt: skip
        return 1
    return 0


def _prepare_data_dir(path: Path) -> None:
    """Create the data directory, or say which setting names a place it cannot be."""
    if path.exists() and not path.is_dir():
        raise OSError(errno.ENOTDIR, f"--data-dir {path} (CONTROLPLANE_DATA_DIR) is a file, "
                      "not a directory")  # fmt: skip
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(exc.errno, f"--data-dir {path} (CONTROLPLANE_DATA_DIR): cannot create "
                      f"it: {exc.strerror or exc}") from None  # fmt: skip
    if not os.access(path, os.W_OK | os.X_OK):
        raise OSError(errno.EACCES, f"--data-dir {path} (CONTROLPLANE_DATA_DIR) is not "
                      "writable by this user")  # fmt: skip


_BIND_PROBLEMS = {
    errno.EADDRINUSE: "the address is already in use (another controlplane?)",
    errno.EADDRNOTAVAIL: "no local interface has that address",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
}


def _os_problem(exc: OSError, host: str, port: int) -> str:
    if exc.errno in _BIND_PROBLEMS and "bind" in str(exc):
        return (f"cannot listen on {host}:{port} (--listen / CONTROLPLANE_LISTEN): "
                f"{_BIND_PROBLEMS[exc.errno]}")  # fmt: skip
    if exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return exc.strerror or str(exc)


# The version log's writer thread needs the GIL back after each system call (write,
# fdatasync) of a group commit; with the default 5 ms interval the event loop, busy with a
# fan-out, kept it waiting ~5 ms each time: a 0.3 ms commit took ~20 ms, and the frames
# waiting on it as long (docs/benchmarks.md). Only threads waiting for the GIL are affected.
GIL_SWITCH_INTERVAL_S = 0.0005
# The collector's young generation: 10,000 allocations (Python's default is 700). Each session
# leaves ~100 container objects; with 700, handshake temporaries that live a few hundred
# allocations were promoted and counted towards a full pass: 25,000 sessions opening cost
# 7 full passes over every object (~40 % of the loop's CPU while opening, 11 passes at
# 50,000: more than linear), 0–1 with 10,000 (loadtest/bench_scale_inproc.py,
# docs/benchmarks.md). A young pass over 10,000 objects takes well under a millisecond.
GC_THRESHOLDS = (10_000, 10, 10)


def _build() -> str:
    """Whether the fan-out's per-session modules run compiled (docs/architecture.md, "The
    compiled build"): asked once the app is built (they are imported then)."""
    loaded = native.compiled_modules()
    compiled = sum(loaded.values())
    return f"{compiled} of {len(loaded)} modules compiled" if compiled else "interpreted"


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
