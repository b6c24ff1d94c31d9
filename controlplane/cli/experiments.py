"""``controlplane experiments show`` / ``verify`` / ``assignments``: the summary table, the
exposure check and the sticky assignments (docs/experiments.md)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from controlplane.cli.http import ControlPlaneClient
from controlplane.cli.options import add_command
from controlplane.cli.output import Column, Progress, listing, out, table
from sessions.exposures import exposure_problem

__all__ = ["register", "srm_line", "summary_text", "verify_report", "verify_text"]

Table = Callable[[Sequence[str], Iterable[Sequence[Any]]], str]


def summary_text(summary: dict[str, Any], table: Table) -> str:
    srm = summary.get("srm") or {}
    rows = [
        [v.get("name"), f"{v.get('weight'):g}%", f"{100 * v.get('expected_share', 0):.1f}%",
         v.get("exposed"), f"{100 * v.get('exposed_share', 0):.1f}%"]
        for v in summary.get("variants", [])
    ]  # fmt: skip
    head = (f"experiment {summary.get('experiment')} (iteration {summary.get('iteration')}, "
            f"policy {summary.get('policy')}@{summary.get('version')}): "
            f"{summary.get('exposed')} exposed (calls)")  # fmt: skip
    body = table(["VARIANT", "WEIGHT", "EXPECTED", "EXPOSED", "SHARE"], rows)
    return f"{head}\n{body}\n{srm_line(srm, summary.get('exposed'))}"


def srm_line(srm: dict[str, Any], exposed: Any) -> str:
    """The verdict as the console says it: MISMATCH, ok, or too few exposures to judge (the
    check only decides from ``min_exposures`` on; below, a p-value is no verdict)."""
    least = srm.get("min_exposures")
    head = f"SRM ({srm.get('test')}): p = {srm.get('p_value', 1):.3g}"
    if srm.get("mismatch"):
        verdict = "MISMATCH"
    elif isinstance(exposed, int) and isinstance(least, int) and exposed < least:
        return f"{head}, too few exposures for a verdict ({exposed} of {least})"
    else:
        verdict = "ok"
    return f"{head}, {verdict} (threshold {srm.get('threshold')}, from {least} exposures)"


def verify_report(
    client: ControlPlaneClient, key: str, progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Each exposure against the entry of its session's version log that it names (the chain
    itself is ``audit verify``'s); ``progress(done, total)`` before each log read."""
    problems, checked = [], 0
    rows = [row for row in client.assignments(key) if row.get("exposed_at") is not None]
    for row in rows:
        if progress is not None:
            progress(checked, len(rows))
        checked += 1
        problem = exposure_problem(row, client.session_log(str(row["session_id"])))
        if problem is not None:
            problems.append({"session_id": row["session_id"],
                             "iteration": row.get("iteration"), "problem": problem})  # fmt: skip
    return {"experiment": key, "checked": checked, "ok": not problems, "problems": problems}


def verify_text(report: dict[str, Any]) -> str:
    problems = report["problems"]
    verdict = "ok" if not problems else f"{len(problems)} NOT BACKED"
    lines = [f"{report['checked']} exposure(s) of {report['experiment']} checked against "
             f"their version logs: {verdict}"]  # fmt: skip
    lines += [f"  {p['session_id']} (iteration {p['iteration']}): {p['problem']}" for p in problems]
    return "\n".join(lines)


def _experiment_show(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    summary = client.experiment(args.key)
    out(args, summary, lambda: summary_text(summary, table))
    return 0


def _experiment_verify(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    """Exit 1 when an exposure is not backed by its session's version log."""
    report = verify_report(
        client, args.key, Progress(f"experiments verify {args.key}: exposures checked")
    )
    out(args, report, lambda: verify_text(report))
    return 0 if report["ok"] else 1


def _assignments(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    if args.csv:
        sys.stdout.write(client.assignments_csv(args.key))
        return 0
    keys = ("session_id", "call_id", "policy", "version", "variant", "exposed_at")
    columns: list[Column] = [(k.upper(), k) for k in keys]
    columns.append(("COUNTED", lambda row: "yes" if row.get("counted") else "no"))  # per call
    columns += [("LEFT_AT", "left_at"), ("STATE", "state")]
    listing(args, client.assignments(args.key), columns)
    return 0


def register(sub: Any) -> None:
    experiments = sub.add_parser("experiments", help="A/B experiments").add_subparsers(
        dest="action", required=True
    )
    p = add_command(
        experiments, "show", _experiment_show, "per-variant exposures and the SRM check"
    )
    p.add_argument("key")
    p = add_command(experiments, "verify", _experiment_verify, "check each exposure against "
                    "the version-log entry it names; exit 1 if one is not backed")  # fmt: skip
    p.add_argument("key")
    p = add_command(experiments, "assignments", _assignments, "sticky variant assignments")
    p.add_argument("key")
    p.add_argument("--csv", action="store_true", help="CSV with a header row")
