"""The auditor's commands: ``controlplane audit verify`` and ``audit at`` (through a server,
offline from ``--data-dir``, or from the durable stream ``CP_AUDIT`` with ``--nats-url``: no
control plane running and nothing from Redis), ``audit export`` from ``CP_AUDIT``, and
``audit recover``: entries a replica spilled at shutdown appended to its data dir's log.

``verify`` recomputes each session's hash chain and checks the signed checkpoints
(``sessions.checkpoints``): signatures under the trusted key(s), the checkpoints' own chain,
and every head they commit to (exact re-shipped duplicates are dropped first; any other
difference is reported). ``at`` rebuilds the configuration in effect for a session at an
instant, with the evidence (``sessions.config_at``). ``export`` writes the stored entries as
JSONL, byte for byte as they were hashed, for one session or for every entry whose ``at`` lies
in ``[--since, --until)`` (checkpoint records are not exported). NATS settings (URL,
credentials, stream and subject prefix) also come from the ``CONTROLPLANE_*`` environment,
like ``serve``. ``--public-key FILE`` (PEM or base64 of the raw 32 bytes; repeatable) pins the
checkpoint signers; without it the keys the trail publishes are trusted (each chain of
checkpoints must start at #1 under its key), and the output says so.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from controlplane.audit.reader import dedupe
from controlplane.audit.sources import (
    CHECKPOINT_GRACE_S,
    Trail,
    checkpoint_evidence,
    config_at_answer,
    parse_instant,
    require_checkpoints,
    verify_answer,
)
from controlplane.cli.audit_text import at_text, verify_text
from controlplane.cli.datadir import DataDirLock
from controlplane.cli.http import CliError, ControlPlaneClient
from controlplane.cli.options import add_command, client_for
from controlplane.cli.output import Ticker, out
from controlplane.cluster.nats_audit import NatsAuditStream
from controlplane.cluster.nats_bus import NatsConnection
from controlplane.config import Settings, add_flags, flag_values
from controlplane.errors import ControlPlaneError
from sessions.audit_trail import group_rows
from sessions.checkpoints import load_public_key
from sessions.clock import SystemClock
from sessions.versionlog.file import FileVersionLog
from sessions.versionlog.spill import RecoverError, recover

__all__ = [
    "FILE_ORIGIN",
    "add_audit_options",
    "add_export",
    "add_nats_options",
    "add_recover",
    "at_command",
    "at_text",
    "export_entries",
    "file_trail",
    "local_trail",
    "nats_trail",
    "parse_time",
    "register",
    "verify_command",
    "verify_text",
]


FILE_ORIGIN = ("not proven: whoever edits an export can recompute its chain; prove it against "
               "the signed trail (audit verify ID --public-key with --data-dir, --nats-url or "
               "the server)")  # fmt: skip
_NATS_SETTINGS = ("nats_url", "nats_creds", "nats_nkey", "nats_audit_stream", "nats_subject_prefix")


def add_nats_options(parser: argparse.ArgumentParser) -> None:
    """``serve``'s own flags for the durable audit stream (the same declarations)."""
    add_flags(parser, _NATS_SETTINGS)


def nats_settings(args: argparse.Namespace) -> Settings:
    given = flag_values(args)
    settings = Settings.from_env(flags={n: given[n] for n in _NATS_SETTINGS if n in given})
    if not settings.nats_url:
        raise CliError("pass --nats-url (or set CONTROLPLANE_NATS_URL)", 2)
    return settings


def parse_time(value: str) -> float:
    """RFC 3339 (``2026-01-31T12:00:00Z``) or Unix seconds."""
    try:
        return parse_instant(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _read(
    settings: Settings, sink: Callable[[bytes], None], session_id: str | None, since: float | None
) -> None:
    async def run() -> None:
        conn = NatsConnection(settings, name="controlplane audit")
        await conn.connect()
        try:
            await NatsAuditStream(conn).read(sink, session_id=session_id, since=since)
        finally:
            await conn.close()

    try:
        asyncio.run(run())
    except ControlPlaneError as exc:
        raise CliError(exc.message) from None


def _row(data: bytes) -> dict[str, Any]:
    try:
        row = json.loads(data)
    except ValueError:
        return {}
    return row if isinstance(row, dict) else {}


def nats_trail(settings: Settings, session_id: str | None) -> Trail:
    """The trail as ``CP_AUDIT`` holds it (checkpoints read before entries)."""

    async def run() -> Trail:
        conn = NatsConnection(settings, name="controlplane audit")
        await conn.connect()
        try:
            stream = NatsAuditStream(conn)
            if session_id is not None:
                checkpoints = await stream.checkpoint_rows()
                return Trail("CP_AUDIT", {session_id: await stream.session_rows(session_id)},
                             checkpoints)  # fmt: skip
            rows: list[dict[str, Any]] = []
            await stream.read(lambda data: rows.append(_row(data)))  # one pass, stream order
            groups, found = group_rows(rows)
            return Trail(
                "CP_AUDIT",
                {sid: dedupe(group) for sid, group in groups.items()},
                [dict(row) for row in found],
            )
        finally:
            await conn.close()

    try:
        return asyncio.run(run())
    except ControlPlaneError as exc:
        raise CliError(exc.message) from None


def local_trail(data_dir: Path, session_id: str | None) -> Trail:
    """The file version log under ``<data_dir>/audit``, read only (never repaired)."""
    directory = data_dir / "audit"
    if not directory.is_dir():
        raise CliError(f"no audit log at {directory} (expected <data-dir>/audit/*.jsonl)")
    log = FileVersionLog(directory, SystemClock())

    async def run() -> Trail:
        checkpoints = await log.checkpoint_rows()  # first: see controlplane.audit.sources
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in await log.stored_rows(session_id):
            groups.setdefault(str(row.get("session_id")), []).append(row)
        if session_id is not None:
            groups.setdefault(session_id, [])
        return Trail("local", groups, checkpoints)

    return asyncio.run(run())


def _pinned(args: argparse.Namespace) -> list[Ed25519PublicKey] | None:
    keys = []
    for path in getattr(args, "public_key", None) or ():
        try:
            keys.append(load_public_key(Path(path).read_bytes()))
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise CliError(f"{path}: {exc}") from None
    return keys or None


def _raw_b64(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def _source(args: argparse.Namespace) -> str:
    given = [flag for flag, value in (("--data-dir", args.data_dir), ("--nats-url", args.nats_url),
             ("--file", getattr(args, "file", None))) if value is not None]  # fmt: skip
    if len(given) > 1:
        raise CliError(f"pass one of {', '.join(given)}", 2)
    if getattr(args, "file", None) is not None:
        return "file"
    return "local" if args.data_dir is not None else "nats" if args.nats_url else "server"


def file_trail(path: Path, session_id: str | None) -> Trail:
    """The entries of an ``audit export`` file (JSON lines as they were hashed), per session;
    no checkpoints (the export leaves them out)."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    groups: dict[str, list[dict[str, Any]]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        row = _row(line)
        if not row.get("session_id"):
            raise CliError(f"{path}:{number} is not an audit entry (a JSON object with a "
                           "session_id): not an `audit export` file?")  # fmt: skip
        groups.setdefault(str(row["session_id"]), []).append(row)
    if session_id is not None:
        groups = {session_id: groups.get(session_id, [])}
    return Trail(f"file {path}", groups, [])


def verify_command(
    args: argparse.Namespace, client: Callable[[argparse.Namespace], ControlPlaneClient]
) -> dict[str, Any]:
    """The verification answer ({"items", "ok", "checkpoints", "source"}) from the source
    the options name."""
    source, pinned = _source(args), _pinned(args)
    if source == "server":
        keys = [_raw_b64(k) for k in pinned or ()]
        answer = client(args).verify_audit(args.id, public_keys=keys)
        answer.pop("next", None)
        return answer
    if source == "file":
        if pinned:  # an export has no signed checkpoint: a pin would authenticate nothing
            raise CliError("--public-key with --file: an export holds no signed checkpoint, "
                           f"so no key proves its origin; {FILE_ORIGIN}", 2)  # fmt: skip
        answer = verify_answer(file_trail(args.file, args.id), args.id, None)
        return {**answer, "origin": FILE_ORIGIN}
    if source == "local":
        with Ticker(f"audit verify: reading {args.data_dir / 'audit'}"):
            trail = local_trail(args.data_dir, args.id)
        with Ticker(f"audit verify: recomputing {len(trail.groups)} session chain(s)"):
            answer = verify_answer(trail, args.id, pinned)
        if getattr(args, "allow_missing_checkpoints", False):
            return answer
        grace = getattr(args, "checkpoint_grace_s", None)
        grace = CHECKPOINT_GRACE_S if grace is None else grace
        evidence = checkpoint_evidence(args.data_dir)
        return require_checkpoints(answer, trail, evidence, now=time.time(), grace_s=grace)
    with Ticker(f"audit verify: reading {args.nats_audit_stream or 'CP_AUDIT'}"):
        trail = nats_trail(nats_settings(args), args.id)
    with Ticker(f"audit verify: recomputing {len(trail.groups)} session chain(s)"):
        return verify_answer(trail, args.id, pinned)


def at_command(
    args: argparse.Namespace, client: Callable[[argparse.Namespace], ControlPlaneClient]
) -> dict[str, Any]:
    source, pinned = _source(args), _pinned(args)
    if source == "server":
        keys = [_raw_b64(k) for k in pinned or ()]
        return client(args).config_at(args.session, args.time, public_keys=keys)
    if source == "local":
        trail = local_trail(args.data_dir, args.session)
    else:
        trail = nats_trail(nats_settings(args), args.session)
    try:
        return config_at_answer(trail, args.session, args.time, pinned)
    except ControlPlaneError as exc:
        raise CliError(exc.message) from None


def add_audit_options(parser: argparse.ArgumentParser) -> None:
    """Source and trust options shared by ``audit verify`` and ``audit at``."""
    parser.add_argument("--data-dir", type=Path, help="read local files, without a server")
    parser.add_argument(
        "--public-key", action="append", metavar="FILE",
        help="trusted checkpoint key (PEM or base64 raw Ed25519); repeatable. Default: each "
        "checkpoint chain's own key, published in the trail",
    )  # fmt: skip
    add_nats_options(parser)


def export_entries(
    settings: Settings,
    out: IO[bytes],
    *,
    session_id: str | None,
    since: float | None,
    until: float | None,
) -> int:
    """Write matching entries as JSONL to ``out``; returns how many."""
    seen: set[tuple[Any, Any, Any]] = set()
    count = 0

    def sink(data: bytes) -> None:
        nonlocal count
        row = _row(data)
        key = (row.get("session_id"), row.get("seq"), row.get("hash"))
        at = row.get("at")
        if key in seen or row.get("type") == "checkpoint":
            return
        if isinstance(at, int | float) and (
            (since is not None and at < since) or (until is not None and at >= until)
        ):
            return
        seen.add(key)
        out.write(data.rstrip(b"\n") + b"\n")
        count += 1

    _read(settings, sink, session_id, since)
    return count


def _export(args: argparse.Namespace) -> int:
    if args.session is None and (args.since is None or args.until is None):
        raise CliError("pass --session ID, or both --since and --until", 2)
    settings = nats_settings(args)
    if args.output in (None, "-"):
        count = export_entries(settings, sys.stdout.buffer, session_id=args.session,
                               since=args.since, until=args.until)  # fmt: skip
        sys.stdout.flush()
    else:
        with Path(args.output).open("wb") as fh:
            count = export_entries(settings, fh, session_id=args.session, since=args.since,
                                   until=args.until)  # fmt: skip
    print(f"exported {count} entries", file=sys.stderr)
    return 0


def add_export(audit: Any) -> None:
    text = "write durable audit entries (CP_AUDIT) as JSONL"
    p = audit.add_parser("export", help=text, description=text)
    add_nats_options(p)
    p.add_argument("--session", help="every entry of this session")
    p.add_argument("--since", type=parse_time, help="entries at or after (RFC 3339 or Unix s)")
    p.add_argument("--until", type=parse_time, help="entries before (RFC 3339 or Unix s)")
    p.add_argument("-o", "--output", help="file to write (default stdout)")
    p.set_defaults(func=_export)


def _audit_verify(args: argparse.Namespace) -> int:
    answer = verify_command(args, client_for)
    if args.id is not None and not any(r.get("count") for r in answer.get("items", [])):
        raise CliError(f"no version log entries for session {args.id}")
    out(args, answer, lambda: verify_text(answer))
    return 0 if answer.get("ok") else 1


def _audit_at(args: argparse.Namespace) -> int:
    answer = at_command(args, client_for)
    out(args, answer, lambda: at_text(answer))
    return 0 if answer.get("verified") else 1


def _audit_recover(args: argparse.Namespace) -> int:
    """Append spill files (``sessions.versionlog.spill``) to ``<data-dir>/audit``, each all
    or nothing, under the data dir's lock (a replica running there refuses it)."""
    try:
        lock = DataDirLock(args.data_dir)
    except OSError as exc:
        raise CliError(f"cannot recover: {exc.strerror or exc}") from None
    answers = []
    try:
        for path in args.files:
            try:
                done = recover(args.data_dir / "audit", path, time.time())
            except RecoverError as exc:
                raise CliError(f"cannot recover: {exc}") from None
            except OSError as exc:
                raise CliError(f"cannot recover {path}: {exc.strerror or exc}") from None
            answers.append({"file": str(path), "entries": done.entries,
                            "sessions": done.sessions, "appended_to": str(done.file),
                            "already_in_log": done.present})  # fmt: skip
            if not args.as_json:
                print(f"{path}: appended {done.entries} entries of {done.sessions} sessions "
                      f"to {done.file} ({done.present} were in the log already)")  # fmt: skip
    finally:
        lock.close()
    if args.as_json:
        print(json.dumps({"recovered": answers}, indent=2))
    return 0


def add_recover(audit: Any) -> None:
    text = ("append entries a replica kept in --audit-spill-dir (its disk refused them at "
            "shutdown) to the version log of --data-dir, checked to continue each chain; run "
            "with the replica stopped")  # fmt: skip
    p = audit.add_parser("recover", help=text, description=text)
    p.add_argument("files", nargs="+", type=Path, metavar="SPILL_FILE",
                   help="unwritten-*.jsonl, appended in the order given")  # fmt: skip
    p.add_argument("--data-dir", type=Path, required=True, help="the replica's data dir")
    p.add_argument("--json", dest="as_json", action="store_true", help="JSON output")
    p.set_defaults(func=_audit_recover)


def register(sub: Any) -> None:
    audit = sub.add_parser("audit", help="the per-session version log").add_subparsers(
        dest="action", required=True
    )
    p = add_command(audit, "verify", None, "recompute hash chains and check signed "
                    "checkpoints; exit 1 if any is broken")  # fmt: skip
    p.add_argument("id", nargs="?", help="one session (default: every session)")
    add_audit_options(p)
    p.add_argument(
        "--allow-missing-checkpoints", action="store_true",
        help="with --data-dir: accept entries no checkpoint covers although the data dir "
        "shows checkpoints were being written (by default that fails: they were deleted)",
    )  # fmt: skip
    p.add_argument(
        "--checkpoint-grace-s", type=float, metavar="S",
        help="with --data-dir: entries younger than this may await their checkpoint "
        "(default 60; the writer checkpoints every 10 s by default)",
    )  # fmt: skip
    p.add_argument(
        "--file", type=Path, metavar="FILE",
        help="recompute the chains of an `audit export` JSONL file (one call's proof), offline; "
        "it holds no checkpoints, so a cut-off end of a session is not detectable from it",
    )  # fmt: skip
    p.set_defaults(func=_audit_verify)
    p = add_command(audit, "at", None, "the configuration in effect for a session at an "
                    "instant, with its evidence; exit 1 unless it verifies")  # fmt: skip
    p.add_argument("session")
    p.add_argument("time", type=parse_time, help="RFC 3339 or Unix seconds")
    add_audit_options(p)
    p.set_defaults(func=_audit_at)
    add_export(audit)
    add_recover(audit)
