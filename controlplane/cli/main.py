"""controlplane console script: serve, emulator, and the commands that talk to a running
control plane over its REST API (policy, sessions, experiments, audit), and the auditor's
commands that read the durable audit stream straight from NATS (audit verify/export
--nats-url).

Client commands take --url (env CONTROLPLANE_URL, default http://127.0.0.1:8080), --token
(env CONTROLPLANE_TOKEN) and --json. Exit codes: 0 ok, 1 failure (an error answer, an
unreachable server, a broken audit chain), 2 usage error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from controlplane.cli import audit as audit_cli
from controlplane.cli import experiments as cli_experiments
from controlplane.cli import history as policy_history
from controlplane.cli import rollout as cli_rollout
from controlplane.cli import status as cli_status
from controlplane.cli.http import DEFAULT_URL, ApiError, CliError, ControlPlaneClient
from controlplane.cli.serve import register as register_serve
from controlplane.signing import add_sign_command
from emulator.cli import register as register_emulator

__all__ = ["build_parser", "main"]


# -- client commands -------------------------------------------------------------------------

Handler = Callable[[argparse.Namespace, ControlPlaneClient], int]


def _print_error(exc: CliError) -> None:
    print(f"controlplane: {exc.message}", file=sys.stderr)
    if isinstance(exc, ApiError):
        for violation in exc.details.get("violations", []):
            if isinstance(violation, dict):
                where, text = violation.get("field", "?"), violation.get("message", "")
                print(f"  - {where}: {text}", file=sys.stderr)
        if exc.status == 401:
            print("  (pass --token or set CONTROLPLANE_TOKEN)", file=sys.stderr)


def _client(args: argparse.Namespace) -> ControlPlaneClient:
    url = args.url or os.environ.get("CONTROLPLANE_URL") or DEFAULT_URL
    token = args.token or os.environ.get("CONTROLPLANE_TOKEN") or None
    return ControlPlaneClient(url, token, timeout_s=args.timeout or 30.0)


def _with_client(handler: Handler) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return handler(args, _client(args))

    return run


def _out(args: argparse.Namespace, data: Any, human: Callable[[], str]) -> None:
    if args.as_json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        text = human()
        if text:
            print(text)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces; cells are shortened to 60 characters."""
    cells = [[_short(c) for c in row] for row in rows]
    if not cells:
        return "(none)"
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [headers, *cells]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines
    )


def _short(value: Any, width: int = 60) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _when(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        stamp = dt.datetime.fromtimestamp(value, dt.UTC)
        return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return _short(value)


def _labels(labels: Any) -> str:
    if not isinstance(labels, dict) or not labels:
        return "-"
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _read_document(path: str) -> tuple[bytes, str]:
    """(bytes, content type) of a policy file; ``-`` reads stdin."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    suffix = Path(path).suffix.lower()
    if suffix == ".json" or (suffix not in (".yaml", ".yml") and data.lstrip()[:1] == b"{"):
        return data, "application/json"
    return data, "application/yaml"


Column = tuple[str, str | Callable[[dict[str, Any]], Any]]


def _listing(args: argparse.Namespace, items: list[dict[str, Any]], cols: Sequence[Column]) -> None:
    def cell(item: dict[str, Any], get: str | Callable[[dict[str, Any]], Any]) -> Any:
        return item.get(get) if isinstance(get, str) else get(item)

    rows = [[cell(item, get) for _, get in cols] for item in items]
    _out(args, items, lambda: _table([header for header, _ in cols], rows))


def _refs(entry: dict[str, Any]) -> str:
    refs = entry.get("policies") or []
    return ",".join(
        f"{r.get('id')}@{r.get('version')}" + (f"/{r['variant']}" if r.get("variant") else "")
        for r in refs
    )


def _versions(session: dict[str, Any]) -> str:
    v = session.get("versions") or {}
    return "/".join(_short(v.get(k)) for k in ("desired", "sent", "acked"))


_POLICY_COLUMNS: Sequence[Column] = (
    ("ID", "id"),
    ("VERSION", "version"),
    ("STATUS", "status"),
    ("PRIORITY", lambda p: (p.get("policy") or {}).get("priority")),
    ("PUBLISHED", lambda p: _when(p.get("published_at"))),
    ("ACTOR", "actor"),
)
_SESSION_COLUMNS: Sequence[Column] = (
    ("ID", "id"),
    ("KIND", "kind"),
    ("MODEL", "model"),
    ("STATE", "state"),
    ("DESIRED/SENT/ACKED", _versions),
    ("NODE", "node"),
    ("LABELS", lambda s: _labels(s.get("labels"))),
)
_LOG_COLUMNS: Sequence[Column] = (
    ("SEQ", "seq"),
    ("AT", lambda e: _when(e.get("at"))),
    ("CAUSE", "cause"),
    ("VERSION", "version"),
    ("STATUS", "status"),
    ("POLICIES", _refs),
    ("DELTA/ERROR", lambda e: e.get("error") or e.get("delta")),
)


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True).rstrip()


# policy


def _policy_apply(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    result = client.apply_policy(*_read_document(args.file))
    event = f" (event {result['event_id']})" if result.get("event_id") else ""
    if result.get("unchanged"):
        text = (f"policy {result.get('id')} unchanged: identical to the current version "
                f"{result.get('version')}; no version created")  # fmt: skip
    else:
        text = f"published policy {result.get('id')} version {result.get('version')}{event}"
    if not args.wait:
        _out(args, result, lambda: _with_warnings(text, result))
        return 0
    if not args.as_json:
        print(_with_warnings(text, result), flush=True)
    return cli_rollout.apply_wait(args, client, result)


def _with_warnings(text: str, answer: Mapping[str, Any]) -> str:
    """``text`` plus one ``warning:`` line per lock the answer says it crosses only on
    sessions carrying both policies' labels (docs/policies.md#locks)."""
    lines = [text]
    for item in answer.get("warnings") or ():
        if isinstance(item, Mapping):
            lines.append(f"warning: {item.get('message') or item}")
    return "\n".join(lines)


def _policy_history(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    records = client.policy_versions(args.id)
    rows = [policy_history.history_row(r) for r in records]
    _out(args, records, lambda: _table(policy_history.HISTORY_HEADERS, rows))
    return 0


def _policy_diff(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    records = client.policy_versions(args.id)
    a, b = (policy_history.pick_version(records, args.id, v) for v in (args.a, args.b))
    changes = policy_history.diff_documents(a.get("policy") or {}, b.get("policy") or {})
    data = {"id": args.id, "from": args.a, "to": args.b, "changes": changes}

    def human() -> str:
        if not changes:
            return f"policy {args.id}: versions {args.a} and {args.b} are identical"
        rows = [(c["path"], c["from"], c["to"]) for c in changes]
        return _table(("FIELD", f"VERSION {args.a}", f"VERSION {args.b}"), rows)

    _out(args, data, human)
    return 0


def _policy_ls(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    _listing(args, client.list_policies(include_retired=args.all), _POLICY_COLUMNS)
    return 0


def _policy_show(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    policy = client.get_policy(args.id)
    _out(args, policy, lambda: _yaml(policy))
    return 0


def _policy_preview(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    p = client.preview_policy(*_read_document(args.file))

    def human() -> str:
        lines = [
            f"policy {p.get('id')} version {p.get('version')} would change "
            f"{p.get('changed')} of {p.get('targeted')} targeted session(s)"
        ]
        for name in ("by_kind", "by_variant"):
            if p.get(name):
                lines.append(f"{name.replace('_', ' ')}: {_short(p[name], 200)}")
        samples = p.get("samples") or []
        if samples:
            rows = [(s.get("session_id"), s.get("delta")) for s in samples]
            lines += ["", _table(("SESSION", "DELTA"), rows)]
        return _with_warnings("\n".join(lines), p)

    _out(args, p, human)
    return 0


def _policy_rollback(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    result = client.rollback_policy(args.id, args.to, reason=args.reason)
    _out(
        args,
        result,
        lambda: _with_warnings(
            f"rolled back policy {args.id} to the content of version "
            f"{args.to}: now version {result.get('version')}",
            result,
        ),
    )
    return 0


def _policy_retire(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    result = client.retire_policy(args.id, reason=args.reason)
    _out(args, result, lambda: f"retired policy {args.id}")
    return 0


def _policy_wave(action: str, done: str) -> Any:
    def run(args: argparse.Namespace, client: ControlPlaneClient) -> int:
        result = client.wave_action(args.id, action)
        waves = result.get("waves") or {}

        def human() -> str:
            return (
                f"{done} policy {args.id} version {result.get('version')}: wave "
                f"{int(waves.get('index') or 0) + 1} of {len(waves.get('waves') or [])} "
                f"({waves.get('percent')}%), {waves.get('state')}"
            )

        _out(args, result, human)
        return 0

    return run


def _policy_rollout(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    if args.watch:
        return cli_rollout.watch(client, args.id, interval_s=args.interval,
                                 as_json=args.as_json, table=_table)  # fmt: skip
    r = client.rollout_status(args.id)
    _out(args, r, lambda: cli_rollout.rollout_text(r, _table))
    return 0


# sessions


def _sessions_ls(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    items = client.list_sessions(
        selector=args.selector or (), kind=args.kind, state=args.state, limit=args.limit,
        upstream_id=args.upstream_id,
    )  # fmt: skip
    _listing(args, items, _SESSION_COLUMNS)
    return 0


def _sessions_show(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    session = client.get_session(args.id)
    _out(args, session, lambda: _yaml(session))
    return 0


def _sessions_log(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    _listing(args, client.session_log(args.id), _LOG_COLUMNS)
    return 0


def _sessions_status(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    rows = cli_status.status_rows(
        client, policy=args.policy, selector=args.selector or (), kind=args.kind,
        stale_after_s=args.stale_after,
    )  # fmt: skip
    cells = [
        (r["session_id"], r["kind"], r["node"], r["policy"], r["version"], r["variant"],
         r["status"], _when(r["at"]), r["seq"])
        for r in rows
    ]  # fmt: skip
    _out(args, rows, lambda: _table(cli_status.STATUS_HEADERS, cells))
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
    _out(args, session, lambda: f"session {args.id} labels: {_labels(session.get('labels'))}")
    return 0


# experiments, audit


def _experiment_show(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    summary = client.experiment(args.key)
    _out(args, summary, lambda: cli_experiments.summary_text(summary, _table))
    return 0


def _experiment_verify(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    """Exit 1 when an exposure is not backed by its session's version log."""
    report = cli_experiments.verify_report(client, args.key)
    _out(args, report, lambda: cli_experiments.verify_text(report))
    return 0 if report["ok"] else 1


def _assignments(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    if args.csv:
        sys.stdout.write(client.assignments_csv(args.key))
        return 0
    keys = ("session_id", "policy", "version", "variant", "exposed_at", "left_at", "state")
    _listing(args, client.assignments(args.key), [(k.upper(), k) for k in keys])
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    answer = audit_cli.verify_command(args, _client)
    if args.id is not None and not any(r.get("count") for r in answer.get("items", [])):
        raise CliError(f"no version log entries for session {args.id}")
    _out(args, answer, lambda: audit_cli.verify_text(answer))
    return 0 if answer.get("ok") else 1


def _audit_at(args: argparse.Namespace) -> int:
    answer = audit_cli.at_command(args, _client)
    _out(args, answer, lambda: audit_cli.at_text(answer))
    return 0 if answer.get("verified") else 1


def _client_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("server")
    group.add_argument("--url", help=f"base URL (env CONTROLPLANE_URL, default {DEFAULT_URL})")
    group.add_argument("--token", help="bearer token (env CONTROLPLANE_TOKEN, preferred)")
    group.add_argument("--timeout", type=_seconds, help="seconds per request (default 30); "
                       "with --wait, the whole wait (default 300)")  # fmt: skip
    group.add_argument("--json", dest="as_json", action="store_true", help="print JSON")
    return common


def _positive(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value!r}")
    return int(value)


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not 0.1 <= number <= 86400:
        raise argparse.ArgumentTypeError(f"must be seconds from 0.1 to 86400, got {value!r}")
    return number


def _register_client_commands(sub: Any) -> None:
    common = [_client_options()]

    def add(group: Any, name: str, handler: Handler | None, text: str) -> Any:
        parser = group.add_parser(name, parents=common, help=text, description=text)
        if handler is not None:
            parser.set_defaults(func=_with_client(handler))
        return parser

    policy = sub.add_parser("policy", help="publish and inspect policies").add_subparsers(
        dest="action", required=True
    )
    p = add(policy, "apply", _policy_apply, "publish a policy version from a YAML/JSON file")
    p.add_argument("-f", "--file", required=True, help="policy file, or - for stdin")
    p.add_argument("--wait", action="store_true", help="then wait until every targeted session "
                   "of the version is final (progress on stderr; --timeout: the whole wait, "
                   "default 300 s; exit codes in docs/cli.md)")  # fmt: skip
    p.add_argument("--interval", type=_seconds, default=1.0, help="seconds between polls "
                   "(default 1)")  # fmt: skip
    p = add(policy, "ls", _policy_ls, "list policies")
    p.add_argument("--all", action="store_true", help="include retired policies")
    add(policy, "show", _policy_show, "show a policy").add_argument("id")
    p = add(policy, "preview", _policy_preview, "which live sessions a policy file would change")
    p.add_argument("-f", "--file", required=True, help="policy file, or - for stdin")
    p = add(policy, "rollback", _policy_rollback, "republish an earlier version as the newest")
    p.add_argument("id")
    p.add_argument("--to", type=_positive, required=True, help="the version to go back to")
    p.add_argument("--reason", help="why: kept in the change record")
    p = add(policy, "retire", _policy_retire, "retire a policy")
    p.add_argument("id")
    p.add_argument("--reason", help="why: kept in the change record")
    p = add(policy, "history", _policy_history, "every version's change record")
    p.add_argument("id")
    p = add(policy, "diff", _policy_diff, "what changed between two versions")
    p.add_argument("id")
    p.add_argument("a", type=_positive, help="a version")
    p.add_argument("b", type=_positive, help="another version")
    p = add(policy, "rollout", _policy_rollout, "delivery status per version and variant")
    p.add_argument("id")
    p.add_argument("--watch", action="store_true", help="refresh until the current version "
                   "converges or is halted (Ctrl-C stops)")  # fmt: skip
    p.add_argument("--interval", type=_seconds, default=1.0, help="seconds between polls "
                   "(default 1)")  # fmt: skip
    for action, done, what in (
        ("promote", "promoted", "advance the current version to its next wave now"),
        ("pause", "paused", "stop the current version's automatic wave advances"),
        ("resume", "resumed", "resume them (the current wave's interval starts again)"),
    ):
        add(policy, action, _policy_wave(action, done), what).add_argument("id")
    add_sign_command(policy)  # offline: signs an event for a raw NATS publisher

    sessions = sub.add_parser("sessions", help="inspect live sessions").add_subparsers(
        dest="action", required=True
    )
    p = add(sessions, "ls", _sessions_ls, "list live sessions")
    p.add_argument("--selector", action="append", help="k=v,k=v2 or 'k in (a,b)'; repeatable")
    p.add_argument("--kind", choices=("streaming-v3", "voice-agent-v1"))
    p.add_argument("--state", help="synced, pending, unverified, rejected, ended")
    p.add_argument("--limit", type=_positive, help="show at most this many")
    p.add_argument("--upstream-id", help="only the session the upstream calls this "
                   "(Begin.id, Voice Agent session_id)")  # fmt: skip
    p = add(sessions, "status", _sessions_status, "per session and policy version: SYNCED, "
            "NOT SENT, SENT, STALE, REJECTED or UNVERIFIED (reads each session's log)")  # fmt: skip
    p.add_argument("--policy", help="only this policy's versions")
    p.add_argument("--selector", action="append", help="k=v,k=v2 or 'k in (a,b)'; repeatable")
    p.add_argument("--kind", choices=("streaming-v3", "voice-agent-v1"))
    p.add_argument("--stale-after", type=_seconds, default=5.0, metavar="S", help="a push "
                   "still sent, unanswered, after S seconds is STALE (default 5: the service's "
                   "default ack_timeout_s)")  # fmt: skip
    add(sessions, "show", _sessions_show, "show a session").add_argument("id")
    add(sessions, "log", _sessions_log, "a session's version log").add_argument("id")
    p = add(sessions, "relabel", _sessions_relabel, "set (k=v) or remove (k-) labels")
    p.add_argument("id")
    p.add_argument("changes", nargs="+", metavar="k=v|k-")

    experiments = sub.add_parser("experiments", help="A/B experiments").add_subparsers(
        dest="action", required=True
    )
    p = add(experiments, "show", _experiment_show, "per-variant exposures and the SRM check")
    p.add_argument("key")
    p = add(experiments, "verify", _experiment_verify, "check each exposure against the "
            "version-log entry it names; exit 1 if one is not backed")  # fmt: skip
    p.add_argument("key")
    p = add(experiments, "assignments", _assignments, "sticky variant assignments")
    p.add_argument("key")
    p.add_argument("--csv", action="store_true", help="CSV with a header row")

    audit = sub.add_parser("audit", help="the per-session version log").add_subparsers(
        dest="action", required=True
    )
    p = add(audit, "verify", None, "recompute hash chains and check signed checkpoints; exit 1 "
            "if any is broken")  # fmt: skip
    p.add_argument("id", nargs="?", help="one session (default: every session)")
    audit_cli.add_audit_options(p)
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
    p.set_defaults(func=_audit_verify)
    p = add(audit, "at", None, "the configuration in effect for a session at an instant, with "
            "its evidence; exit 1 unless it verifies")  # fmt: skip
    p.add_argument("session")
    p.add_argument("time", type=audit_cli.parse_time, help="RFC 3339 or Unix seconds")
    audit_cli.add_audit_options(p)
    p.set_defaults(func=_audit_at)
    audit_cli.add_export(audit)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="controlplane", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    register_serve(sub)
    register_emulator(sub)
    _register_client_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 2
    try:
        code: int = args.func(args)
    except CliError as exc:
        _print_error(exc)
        return exc.exit_code
    except ValueError as exc:
        print(f"controlplane: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
