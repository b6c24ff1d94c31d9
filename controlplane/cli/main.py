"""controlplane console script: serve, emulator, and the commands that talk to a running
control plane over its REST API (policy, sessions, experiments, audit), and the auditor's
commands that read the durable audit stream straight from NATS (audit verify/export
--nats-url).

Client commands take --url (env CONTROLPLANE_URL, default http://127.0.0.1:8080), --token
(env CONTROLPLANE_TOKEN) and --json. Exit codes: 0 ok, 1 failure (an error answer, an
unreachable server, a broken audit chain), 2 usage error; policy apply --wait and policy
rollout --watch: 3 rejected on some session, 4 halted by the guard, 5 --timeout passed
(--wait), 6 superseded by a newer version (--wait); 130 interrupted (docs/cli.md).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Sequence

from controlplane.cli import audit as audit_commands
from controlplane.cli import experiments as experiments_commands
from controlplane.cli import policy as policy_commands
from controlplane.cli import sessions as sessions_commands
from controlplane.cli.http import CliError
from controlplane.cli.output import print_error
from controlplane.cli.serve import register as register_serve
from emulator.cli import register as register_emulator

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="controlplane", description=__doc__)
    parser.add_argument("--version", action="version", version=f"controlplane {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    register_serve(sub)
    register_emulator(sub)
    policy_commands.register(sub)
    sessions_commands.register(sub)
    experiments_commands.register(sub)
    audit_commands.register(sub)
    return parser


def _version() -> str:
    """The installed distribution's version (what a bug report and the image tag name)."""
    try:
        return importlib.metadata.version("voice-controlplane")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 2
    try:
        code: int = args.func(args)
    except CliError as exc:
        print_error(exc)
        return exc.exit_code
    except ValueError as exc:
        print(f"controlplane: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C in any command: the documented 130, no traceback
        print("controlplane: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
