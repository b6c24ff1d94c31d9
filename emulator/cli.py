"""``controlplane emulator`` (registered by controlplane.cli.main) and ``python -m emulator``.

Settings: defaults < ``EMULATOR_*`` environment variables < flags. Every setting read from a
string (the fields of ``EmulatorSettings`` but ``agents`` and ``faults``) has an
``EMULATOR_<NAME>`` variable and a ``--<name>`` flag, both derived from its field, and can be
given as ``--set name=value``; docs/emulator.md describes each. ``--tls-cert`` /
``--tls-key`` (or ``EMULATOR_TLS_*``, else ``CONTROLPLANE_TLS_*``) serve ``wss://`` and
``https://`` (the JavaScript SDK needs ``wss:``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import resource
import signal
import ssl
import sys
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from aiohttp import web

from emulator.errors import EmulatorError, InvalidSetting
from emulator.faults import parse_faults
from emulator.server import build_app
from emulator.settings import (
    ENV_PREFIX,
    FROM_STRINGS,
    EmulatorSettings,
    choices,
    convert_setting,
    parse_listen,
    shown_default,
)

__all__ = ["main", "raise_nofile_limit", "register", "run", "tls_context"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "emulator",
        help="run the local AssemblyAI stand-in upstream (streaming v3 + voice agent)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    declared = {f.name: f for f in fields(EmulatorSettings)}
    for name in FROM_STRINGS:  # a flag per setting, from its field (docs/emulator.md)
        if name == "api_keys":
            continue
        flag = "--" + name.replace("_", "-")
        f = declared[name]
        default = f.default
        text = f"{f.metadata['help']} (default {shown_default(f)}; env {ENV_PREFIX}{name.upper()})"
        text = text.replace("%", "%%")
        if isinstance(default, bool):
            add(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif choices(name):
            add(flag, choices=choices(name), help=text)
        else:
            add(flag, type=_flag_type(name), metavar=name.upper(), help=text)
    add("--api-key", action="append", dest="api_keys", metavar="KEY",
        help="accept only these keys (repeatable); default: any non-empty key")  # fmt: skip
    add("--faults", metavar="JSON", help="fault document applied to every new session")
    add("--set", action="append", default=[], metavar="NAME=VALUE",
        help="any setting by name, e.g. --set word_ms=300 (see docs/emulator.md)")  # fmt: skip
    parser.set_defaults(func=_run)
    return parser


def settings_from_args(args: argparse.Namespace) -> EmulatorSettings:
    overrides: dict[str, Any] = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise InvalidSetting(item, "--set expects name=value")
        overrides[name.strip()] = convert_setting(name.strip(), value)
    for name in FROM_STRINGS:
        value = None if name == "api_keys" else getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    for name in ("tls_cert", "tls_key"):  # the service's variables serve the emulator too
        shared = os.environ.get("CONTROLPLANE_" + name.upper())
        if name not in overrides and not os.environ.get(ENV_PREFIX + name.upper()) and shared:
            overrides[name] = shared
    if args.api_keys:
        overrides["api_keys"] = frozenset(args.api_keys)
    if args.faults:
        try:
            document = json.loads(args.faults)
        except ValueError as exc:
            raise InvalidSetting("faults", f"--faults is not JSON: {exc}") from None
        overrides["faults"] = parse_faults(document)
    try:
        return EmulatorSettings.from_env(**overrides)
    except TypeError as exc:  # unknown --set name
        raise InvalidSetting("--set", str(exc)) from exc


def _flag_type(name: str) -> Any:
    def convert(raw: str) -> Any:
        try:
            return convert_setting(name, raw)
        except InvalidSetting as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def raise_nofile_limit() -> int:
    """Raise the soft open-files limit to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
    return soft


# Full collections walk every live object. With thousands of sessions open, CPython's default
# schedule (one whenever the survivors grow by a quarter, checked every 10 young passes) ran
# several in a burst of updates, each leaving a timeline entry: 70 % of the emulator's CPU for
# 5,000 ``UpdateConfiguration`` (102 → 31 µs per update, loadtest/bench_reconfigure.py,
# docs/benchmarks.md). A full pass every 1,000 middle ones keeps cyclic garbage bounded.
FULL_COLLECTION_EVERY = 1000


def tune_collector() -> None:
    """Freeze start-up objects and make full collections rare (the process-wide policy of the
    emulator CLI; an emulator run inside a test process keeps that process's own)."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)


async def run(settings: EmulatorSettings, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGINT / SIGTERM (or cancellation)."""
    host, port = parse_listen(settings.listen)
    tls = tls_context(settings)
    runner = web.AppRunner(build_app(settings), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=settings.backlog, ssl_context=tls)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    scheme = "https" if tls is not None else "http"
    print(f"emulator listening on {scheme}://{host}:{port} (/v3/ws, /v1/ws)", flush=True)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def tls_context(settings: EmulatorSettings) -> ssl.SSLContext | None:
    """The server TLS context of ``tls_cert`` / ``tls_key`` (None without); InvalidSetting
    names the file and the problem."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile=settings.tls_cert, keyfile=settings.tls_key)
    except OSError as exc:  # ssl.SSLError included
        problem = getattr(exc, "reason", None) or exc.strerror or exc
        raise InvalidSetting(
            "tls_cert", f"{settings.tls_cert} / {settings.tls_key}: {problem}"
        ) from None
    return context


def _run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
        tls_context(settings)  # a bad file is refused before serving
    except (EmulatorError, ValueError) as exc:
        print(f"emulator: {exc}", file=sys.stderr)
        return 2
    raise_nofile_limit()
    tune_collector()
    try:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a Linux dependency
            asyncio.run(run(settings))
        else:
            uvloop.run(run(settings))
    except OSError as exc:  # the port taken, an address no interface has: one line, exit 1
        problem = exc.strerror or str(exc)
        print(f"emulator: cannot listen on {settings.listen} (--listen): {problem}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emulator")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["emulator", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.func(args)
    return code
