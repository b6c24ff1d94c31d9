"""``controlplane sessions ...``: list, status (per session and policy version), show, the
version log, relabel (docs/cli.md)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from controlplane.cli import status as cli_status
from controlplane.cli.http import ApiError, CliError, ControlPlaneClient
from controlplane.cli.options import add_command, positive, seconds
from controlplane.cli.output import (
    Column,
    Progress,
    labels_text,
    listing,
    out,
    short,
    table,
    utc_instant,
    when,
    yaml_text,
)
from sessions.model import SessionState

__all__ = ["follow_log", "register", "session_text"]


def _refs(entry: dict[str, Any]) -> str:
    refs = entry.get("policies") or []
    return ",".join(
        f"{r.get('id')}@{r.get('version')}" + (f"/{r['variant']}" if r.get("variant") else "")
        for r in refs
    )


def _versions(session: dict[str, Any]) -> str:
    v = session.get("versions") or {}
    return "/".join(short(v.get(k)) for k in ("desired", "sent", "acked"))


_SESSION_COLUMNS: Sequence[Column] = (
    ("ID", "id"),
    ("KIND", "kind"),
    ("MODEL", "model"),
    ("STATE", "state"),
    ("DESIRED/SENT/ACKED", _versions),
    ("NODE", "node"),
    ("LABELS", lambda s: labels_text(s.get("labels"))),
)
_LOG_COLUMNS: Sequence[Column] = (
    ("SEQ", "seq"),
    ("AT", lambda e: when(e.get("at"))),
    ("CAUSE", "cause"),
    ("VERSION", "version"),
    ("STATUS", "status"),
    ("POLICIES", _refs),
    ("DELTA/ERROR", lambda e: e.get("error") or e.get("delta")),
)


def _sessions_ls(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    items = client.list_sessions(
        selector=args.selector or (), kind=args.kind, state=args.state, limit=args.limit,
        upstream_id=args.upstream_id,
    )  # fmt: skip
    listing(args, items, _SESSION_COLUMNS)
    return 0


_INSTANTS = ("created_at", "updated_at", "ended_at")


def session_text(session: dict[str, Any]) -> str:
    """``sessions show``: the session as YAML, its instants in RFC 3339 UTC like every table
    (``--json`` keeps the server's Unix seconds)."""
    shown = {k: (utc_instant(v) or v) if k in _INSTANTS else v for k, v in session.items()}
    return yaml_text(shown)


def _sessions_show(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    session = client.get_session(args.id)
    out(args, session, lambda: session_text(session))
    return 0


def _sessions_log(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    if args.follow:
        return follow_log(client, args.id, interval_s=args.interval, as_json=args.as_json)
    listing(args, client.session_log(args.id), _LOG_COLUMNS)
    return 0


_FOLLOW_WIDTHS = (5, 24, 8, 7, 10, 24)  # the columns before DELTA/ERROR (a table cannot grow)


def _follow_line(cells: Sequence[Any]) -> str:
    texts = [short(c) for c in cells]
    padded = [t.ljust(w) for t, w in zip(texts, _FOLLOW_WIDTHS, strict=False)]
    return "  ".join([*padded, *texts[len(_FOLLOW_WIDTHS) :]]).rstrip()


def follow_log(
    client: ControlPlaneClient,
    session_id: str,
    *,
    interval_s: float,
    as_json: bool,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """``sessions log ID --follow``: the log so far, then each entry as it is written (polled
    every ``interval_s``), until the session has ended and its last entry is shown (exit 0);
    Ctrl-C exits 130. ``--json``: one entry per line."""
    if not as_json:
        print(_follow_line([header for header, _ in _LOG_COLUMNS]), flush=True)
    last = 0
    try:
        while True:
            try:  # read before the log: an end seen here has all its entries in the read
                session: dict[str, Any] | None = client.get_session(session_id)
            except ApiError as exc:
                if exc.status != 404 or not last:
                    raise
                session = None  # ended and gone from the registry
            for entry in client.session_log(session_id, after=last):
                last = max(last, int(entry.get("seq") or 0))
                if as_json:
                    print(json.dumps(entry, ensure_ascii=False), flush=True)
                else:
                    cells = [get(entry) if callable(get) else entry.get(get)
                             for _, get in _LOG_COLUMNS]  # fmt: skip
                    print(_follow_line(cells), flush=True)
            if session is None or session.get("state") == "ended":
                cause = "" if session is None else f" ({session.get('end_cause') or 'ended'})"
                print(f"controlplane: session {session_id} ended{cause}", file=sys.stderr)
                return 0
            sleep(interval_s)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _sessions_status(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    rows = cli_status.status_rows(
        client, policy=args.policy, selector=args.selector or (), kind=args.kind,
        stale_after_s=args.stale_after, progress=Progress("sessions status: session logs read"),
    )  # fmt: skip
    cells = [
        (r["session_id"], r["kind"], r["node"], r["policy"], r["version"], r["variant"],
         r["status"], when(r["at"]), r["seq"])
        for r in rows
    ]  # fmt: skip
    out(args, rows, lambda: table(cli_status.STATUS_HEADERS, cells))
    return 0


def _parse_relabel(changes: Sequence[str]) -> dict[str, str | None]:
    labels: dict[str, str | None] = {}
    for change in changes:
        key, sep, value = change.partition("=")
        if sep and key:
            labels[key] = value
        elif not sep and change.endswith("-") and len(change) > 1:
            labels[change[:-1]] = None
        else:
            raise CliError(f"label change {change!r} must be key=value or key- (remove)", 2)
    return labels


def _sessions_relabel(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    session = client.relabel_session(args.id, _parse_relabel(args.changes))
    out(args, session, lambda: f"session {args.id} labels: {labels_text(session.get('labels'))}")
    return 0


def register(sub: Any) -> None:
    sessions = sub.add_parser("sessions", help="inspect live sessions").add_subparsers(
        dest="action", required=True
    )
    p = add_command(sessions, "ls", _sessions_ls, "list live sessions")
    p.add_argument("--selector", action="append", help="k=v,k=v2 or 'k in (a,b)'; repeatable")
    p.add_argument("--kind", choices=("streaming-v3", "voice-agent-v1"))
    p.add_argument("--state", choices=[state.value for state in SessionState])
    p.add_argument("--limit", type=positive, help="show at most this many")
    p.add_argument("--upstream-id", help="only the session the upstream calls this "
                   "(Begin.id, Voice Agent session_id)")  # fmt: skip
    p = add_command(sessions, "status", _sessions_status, "per session and policy version: "
                    "SYNCED, NOT SENT, SENT, STALE, REJECTED or UNVERIFIED (reads each "
                    "session's log)")  # fmt: skip
    p.add_argument("--policy", help="only this policy's versions")
    p.add_argument("--selector", action="append", help="k=v,k=v2 or 'k in (a,b)'; repeatable")
    p.add_argument("--kind", choices=("streaming-v3", "voice-agent-v1"))
    p.add_argument("--stale-after", type=seconds, default=5.0, metavar="S", help="a push "
                   "still sent, unanswered, after S seconds is STALE (default 5: the service's "
                   "default ack_timeout_s)")  # fmt: skip
    add_command(sessions, "show", _sessions_show, "show a session").add_argument("id")
    p = add_command(sessions, "log", _sessions_log, "a session's version log")
    p.add_argument("id")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new entries "
                   "until the session ends (Ctrl-C stops)")  # fmt: skip
    p.add_argument("--interval", type=seconds, default=1.0, help="with --follow, seconds "
                   "between polls (default 1)")  # fmt: skip
    p = add_command(sessions, "relabel", _sessions_relabel, "set (k=v) or remove (k-) labels")
    p.add_argument("id")
    p.add_argument("changes", nargs="+", metavar="k=v|k-")
