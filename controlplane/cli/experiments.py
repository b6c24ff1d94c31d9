"""``controlplane experiments show`` / ``verify``: the summary table and the exposure check
(docs/experiments.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from controlplane.cli.http import ControlPlaneClient
from sessions.exposures import exposure_problem

__all__ = ["summary_text", "verify_report", "verify_text"]

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
            f"{summary.get('exposed')} exposed")  # fmt: skip
    body = table(["VARIANT", "WEIGHT", "EXPECTED", "EXPOSED", "SHARE"], rows)
    verdict = "MISMATCH" if srm.get("mismatch") else "ok"
    line = (f"SRM ({srm.get('test')}): p = {srm.get('p_value', 1):.3g}, {verdict} "
            f"(threshold {srm.get('threshold')}, "
            f"from {srm.get('min_exposures')} exposures)")  # fmt: skip
    return f"{head}\n{body}\n{line}"


def verify_report(client: ControlPlaneClient, key: str) -> dict[str, Any]:
    """Each exposure against the entry of its session's version log that it names (the chain
    itself is ``audit verify``'s)."""
    problems, checked = [], 0
    for row in client.assignments(key):
        if row.get("exposed_at") is None:
            continue
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
