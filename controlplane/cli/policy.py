"""``controlplane policy ...``: publish (with ``--wait``), preview, list, show, roll back,
retire, history, diff, rollout (with ``--watch``), the wave actions and ``sign`` (docs/cli.md)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from controlplane.cli import history as policy_history
from controlplane.cli import rollout as cli_rollout
from controlplane.cli.http import ApiError, CliError, ControlPlaneClient
from controlplane.cli.options import add_command, positive, seconds
from controlplane.cli.output import Column, listing, out, table, when, yaml_text
from controlplane.signing import add_sign_command

__all__ = ["preview_breakdown", "register"]


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


_POLICY_COLUMNS: Sequence[Column] = (
    ("ID", "id"),
    ("VERSION", "version"),
    ("STATUS", "status"),
    ("PRIORITY", lambda p: (p.get("policy") or {}).get("priority")),
    ("PUBLISHED", lambda p: when(p.get("published_at"))),
    ("ACTOR", "actor"),
)


def _send(path: str, send: Callable[[bytes, str], dict[str, Any]]) -> dict[str, Any]:
    """``send`` the file; a parse refusal says which parser the file went to and why."""
    data, content_type = _read_document(path)
    try:
        return send(data, content_type)
    except ApiError as exc:
        if exc.code not in ("bad_json", "bad_yaml"):
            raise
        name = "stdin" if path == "-" else path
        suffix = Path(path).suffix.lower()
        if content_type == "application/json":
            sent, why = (
                "JSON",
                "its name ends in .json" if suffix == ".json" else "it starts with {",
            )
        else:
            sent, why = "YAML", (f"its name ends in {suffix}" if suffix in (".yaml", ".yml")
                                 else "not a .json file and no leading {")  # fmt: skip
        raise ApiError(exc.status, exc.code, f"{exc.server_message} ({name} was sent as {sent}: "
                       f"{why})", exc.details) from None  # fmt: skip


def _policy_apply(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    result = _send(args.file, client.apply_policy)
    event = f" (event {result['event_id']})" if result.get("event_id") else ""
    if result.get("unchanged"):
        text = (f"policy {result.get('id')} unchanged: identical to the current version "
                f"{result.get('version')}; no version created")  # fmt: skip
    else:
        text = f"published policy {result.get('id')} version {result.get('version')}{event}"
    if not args.wait:
        out(args, result, lambda: _with_warnings(text, result))
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
    out(args, records, lambda: table(policy_history.HISTORY_HEADERS, rows))
    return 0


def _policy_diff(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    records = client.policy_versions(args.id)
    a, b = (policy_history.pick_version(records, args.id, v) for v in (args.a, args.b))
    changes = policy_history.diff_documents(a.get("policy") or {}, b.get("policy") or {})
    data = {"id": args.id, "from": args.a, "to": args.b, "changes": changes}

    def human() -> str:
        if not changes:
            return f"policy {args.id}: versions {args.a} and {args.b} are identical"
        return policy_history.diff_text(changes, args.a, args.b)

    out(args, data, human)
    return 0


def _policy_ls(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    listing(args, client.list_policies(include_retired=args.all), _POLICY_COLUMNS)
    return 0


def _policy_show(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    policy = client.get_policy(args.id)
    out(args, policy, lambda: yaml_text(policy))
    return 0


def _policy_preview(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    p = _send(args.file, client.preview_policy)

    def human() -> str:
        lines = [
            f"policy {p.get('id')} version {p.get('version')} would change "
            f"{p.get('changed')} of {p.get('targeted')} targeted session(s)"
        ]
        lines += preview_breakdown(p)
        samples = p.get("samples") or []
        if samples:
            rows = [(s.get("session_id"), s.get("delta")) for s in samples]
            lines += ["", table(("SESSION", "DELTA"), rows)]
        return _with_warnings("\n".join(lines), p)

    out(args, p, human)
    return 0


def _policy_rollback(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    result = client.rollback_policy(args.id, args.to, reason=args.reason)
    out(
        args,
        result,
        lambda: _with_warnings(
            f"rolled back policy {args.id} to the content of version "
            f"{args.to}: now version {result.get('version')}",
            result,
        ),
    )
    return 0


def _policy_transfer(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    result = client.transfer_policy(args.id, args.team, reason=args.reason)
    out(args, result, lambda: (
        f"transferred policy {args.id} from team {result.get('previous_owner_team')} to team "
        f"{result.get('owner_team')} (role {result.get('owner_role')} kept): now version "
        f"{result.get('version')}"))  # fmt: skip
    return 0


def _policy_retire(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    result = client.retire_policy(args.id, reason=args.reason)
    out(args, result, lambda: f"retired policy {args.id}")
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

        out(args, result, human)
        return 0

    return run


def _policy_rollout(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    if args.watch:
        return cli_rollout.watch(client, args.id, interval_s=args.interval,
                                 as_json=args.as_json, table=table)  # fmt: skip
    r = client.rollout_status(args.id)
    out(args, r, lambda: cli_rollout.rollout_text(r, table))
    return 0


def register(sub: Any) -> None:
    policy = sub.add_parser("policy", help="publish and inspect policies").add_subparsers(
        dest="action", required=True
    )
    p = add_command(
        policy, "apply", _policy_apply, "publish a policy version from a YAML/JSON file"
    )
    p.add_argument("-f", "--file", required=True, help="policy file, or - for stdin")
    p.add_argument("--wait", action="store_true", help="then wait until every targeted session "
                   "of the version is final (progress on stderr; --timeout: the whole wait, "
                   "default 300 s; exit codes in docs/cli.md)")  # fmt: skip
    p.add_argument("--interval", type=seconds, default=1.0, help="seconds between polls "
                   "(default 1)")  # fmt: skip
    p = add_command(policy, "ls", _policy_ls, "list policies")
    p.add_argument("--all", action="store_true", help="include retired policies")
    add_command(policy, "show", _policy_show, "show a policy").add_argument("id")
    p = add_command(
        policy, "preview", _policy_preview, "which live sessions a policy file would change"
    )
    p.add_argument("-f", "--file", required=True, help="policy file, or - for stdin")
    p = add_command(
        policy, "rollback", _policy_rollback, "republish an earlier version as the newest"
    )
    p.add_argument("id")
    p.add_argument("--to", type=positive, required=True, help="the version to go back to")
    p.add_argument("--reason", help="why: kept in the change record")
    p = add_command(policy, "retire", _policy_retire, "retire a policy")
    p.add_argument("id")
    p.add_argument("--reason", help="why: kept in the change record")
    p = add_command(policy, "transfer", _policy_transfer, "hand a policy (its locks, its "
                    "experiment key) to another team; admin only")  # fmt: skip
    p.add_argument("id")
    p.add_argument("--team", required=True, help="the new owner team")
    p.add_argument("--reason", required=True, help="why: kept in the change record")
    p = add_command(policy, "history", _policy_history, "every version's change record")
    p.add_argument("id")
    p = add_command(policy, "diff", _policy_diff, "what changed between two versions")
    p.add_argument("id")
    p.add_argument("a", type=positive, help="a version")
    p.add_argument("b", type=positive, help="another version")
    p = add_command(policy, "rollout", _policy_rollout, "delivery status per version and variant")
    p.add_argument("id")
    p.add_argument("--watch", action="store_true", help="refresh until the current version "
                   "converges or is halted (Ctrl-C stops)")  # fmt: skip
    p.add_argument("--interval", type=seconds, default=1.0, help="seconds between polls "
                   "(default 1)")  # fmt: skip
    for action, done, what in (
        ("promote", "promoted", "advance the current version to its next wave now"),
        ("pause", "paused", "stop the current version's automatic wave advances"),
        ("resume", "resumed", "resume them (the current wave's interval starts again)"),
    ):
        add_command(policy, action, _policy_wave(action, done), what).add_argument("id")
    add_sign_command(policy)  # offline: signs an event for a raw NATS publisher


def preview_breakdown(answer: Mapping[str, Any]) -> list[str]:
    """``by kind: streaming-v3 3 of 5 change, voice-agent-v1 0 of 2`` and ``by variant:
    control 3, warm 4 targeted`` (the raw JSON objects were printed before)."""
    lines = []
    kinds = answer.get("by_kind") or {}
    if isinstance(kinds, Mapping) and kinds:
        parts = [f"{kind} {c.get('changed')} of {c.get('targeted')}"
                 for kind, c in sorted(kinds.items()) if isinstance(c, Mapping)]  # fmt: skip
        lines.append(f"by kind (changed of targeted): {', '.join(parts)}")
    variants = answer.get("by_variant") or {}
    if isinstance(variants, Mapping) and variants:
        parts = [f"{name} {count}" for name, count in sorted(variants.items())]
        lines.append(f"by variant (targeted): {', '.join(parts)}")
    return lines
