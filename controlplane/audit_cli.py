"""``controlplane audit verify --nats-url URL [SESSION]`` and ``controlplane audit export``:
the durable audit stream (``CP_AUDIT``) read directly, with no control plane running and
nothing from Redis, for auditors.

``verify`` recomputes each session's hash chain from the stream alone (exact re-shipped
duplicates are dropped first; any other difference is reported). ``export`` writes the stored
entries as JSONL, byte for byte as they were hashed, for one session or for every entry whose
``at`` lies in ``[--since, --until)``. NATS settings (URL, credentials, stream and subject
prefix) also come from the ``CONTROLPLANE_*`` environment, like ``serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from controlplane.audit_sink import dedupe
from controlplane.cliclient import CliError
from controlplane.config import Settings
from controlplane.errors import ControlPlaneError
from sessions.versionlog import verify_entries

__all__ = ["add_export", "add_nats_options", "export_entries", "parse_time", "verify_nats"]


def add_nats_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("durable audit stream (NATS)")
    group.add_argument("--nats-url", help="read CP_AUDIT from NATS (env CONTROLPLANE_NATS_URL)")
    group.add_argument("--nats-creds", type=Path, help="NATS .creds file")
    group.add_argument("--nats-nkey", type=Path, help="NATS nkey seed file")
    group.add_argument("--nats-audit-stream", help="stream name (default CP_AUDIT)")
    group.add_argument("--nats-subject-prefix", help="subject prefix (default cp)")


def nats_settings(args: argparse.Namespace) -> Settings:
    names = ("nats_url", "nats_creds", "nats_nkey", "nats_audit_stream", "nats_subject_prefix")
    settings = Settings.from_env(**{n: getattr(args, n, None) for n in names})
    if not settings.nats_url:
        raise CliError("pass --nats-url (or set CONTROLPLANE_NATS_URL)", 2)
    return settings


def parse_time(value: str) -> float:
    """RFC 3339 (``2026-01-31T12:00:00Z``) or Unix seconds."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an RFC 3339 time or Unix seconds: {value!r}"
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def _read(
    settings: Settings, sink: Callable[[bytes], None], session_id: str | None, since: float | None
) -> None:
    from controlplane.nats_audit import NatsAuditStream
    from controlplane.nats_bus import NatsConnection

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


def verify_nats(settings: Settings, session_id: str | None) -> list[dict[str, Any]]:
    """One report per session found in the stream (or for ``session_id``)."""
    groups: dict[str, list[dict[str, Any]]] = {}

    def sink(data: bytes) -> None:
        row = _row(data)
        key = session_id if session_id is not None else str(row.get("session_id", "?"))
        groups.setdefault(key, []).append(row)

    _read(settings, sink, session_id, None)
    reports = [verify_entries(sid, dedupe(rows)) for sid, rows in sorted(groups.items())]
    keys = ("session_id", "ok", "count", "first_bad_seq", "problem")
    return [{k: getattr(r, k) for k in keys} for r in reports]


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
        if key in seen:
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
