"""Rollout counters: per policy, version and variant, how many sessions are targeted and
where their push stands. Pure functions over the live sessions of one replica, plus the sum
over replicas (each replica publishes its counts; ``GET /v1/policies/{id}/rollout`` adds them).

Counts document (what a replica publishes, JSON): ``{policy_id: [row, ...]}`` where a row is
``{"version", "variant", "targeted", "pending", "sent", "acknowledged", "unverified",
"rejected", "unchanged", "guard_failures", "in_doubt"}`` (``in_doubt``: the part of
``unverified`` a Voice Agent answer never confirmed). ``guard_failures`` are the rejections and
acknowledgement timeouts the rollout guard counts in its window (``controlplane.rollouts.guard``); a
row may carry only them (its sessions ended). The guard's decision reads the same sum.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from controlplane.push.live import LiveSession

__all__ = ["COUNTERS", "local_counts", "rollout_body", "version_totals"]

COUNTERS = (
    "targeted", "pending", "sent", "acknowledged", "unverified", "rejected", "unchanged",
    "guard_failures", "in_doubt",
)  # fmt: skip
# ``in_doubt`` is a part of ``unverified`` (never added to ``targeted``'s sum): the sessions of
# a dialect that acknowledges (Voice Agent) whose push ended with no answer confirming it (no
# answer in time, an answer that cannot be attributed, a write given up after its frame was
# handed to the socket). The rest of ``unverified`` is Streaming v3: written, or applied as a
# control app reported; the protocol has no acknowledgement to wait for

_COLUMN = {
    "pending": "pending",
    "sent": "sent",
    "acked": "acknowledged",
    "unverified": "unverified",
    "rejected": "rejected",
    "skipped": "unchanged",
    "unchanged": "unchanged",
}


def _row(version: int, variant: str | None) -> dict[str, Any]:
    return {"version": version, "variant": variant, **dict.fromkeys(COUNTERS, 0)}


def local_counts(
    live: Iterable[LiveSession], only: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    """This replica's rows per policy id (``only``: just that policy)."""
    rows: dict[str, dict[tuple[int, str | None], dict[str, Any]]] = {}
    for ls in live:
        items = ls.policy_status.items()
        if only is not None:
            entry = ls.policy_status.get(only)
            items = {only: entry}.items() if entry is not None else {}.items()
        for policy_id, (version, variant, status) in items:
            per = rows.setdefault(policy_id, {})
            row = per.get((version, variant))
            if row is None:
                row = per[(version, variant)] = _row(version, variant)
            row["targeted"] += 1
            column = _COLUMN.get(status, "pending")
            row[column] += 1
            if column == "unverified" and ls.session.kind == "voice-agent-v1":
                row["in_doubt"] += 1  # (a part of unverified: COUNTERS)
    return {pid: list(per.values()) for pid, per in rows.items()}


def rollout_body(
    policy_id: str,
    version: int,
    retired: bool,
    parts: Sequence[Sequence[Mapping[str, Any]]],
) -> dict[str, Any]:
    """Sum the rows of every replica into the API answer (rows by version, then variant)."""
    merged: dict[tuple[int, str | None], dict[str, Any]] = {}
    for rows in parts:
        for raw in rows:
            key = (int(raw["version"]), raw.get("variant"))
            row = merged.get(key)
            if row is None:
                row = merged[key] = _row(*key)
            for name in COUNTERS:
                row[name] += int(raw.get(name, 0))
    totals = dict.fromkeys(COUNTERS, 0)
    for row in merged.values():
        for name in COUNTERS:
            totals[name] += row[name]
    ordered = [merged[k] for k in sorted(merged, key=lambda k: (k[0], k[1] or ""))]
    return {"id": policy_id, "version": version, "status": "retired" if retired else "active",
            "versions": ordered, "totals": totals}  # fmt: skip


def version_totals(parts: Sequence[Sequence[Mapping[str, Any]]], version: int) -> tuple[int, int]:
    """(targeted, guard_failures) of one version, summed over variants and replicas."""
    targeted = failures = 0
    for rows in parts:
        for raw in rows:
            if int(raw["version"]) == version:
                targeted += int(raw.get("targeted", 0))
                failures += int(raw.get("guard_failures", 0))
    return targeted, failures
