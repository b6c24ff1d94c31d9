"""What a load-test run leaves for an SRE to archive, and the checks around it.

* ``preflight`` — before any user starts: the target answers and ``LT_TOKEN`` is accepted, or
  the run stops at once with one clear line (exit code 2).
* ``write_summary`` — the SLO verdict, the thresholds, the breaches and the latency rows as
  JSON next to the ``--csv`` files (``<prefix>_summary.json``).
* ``retire_policy`` — the run's ``LT_POLICY_ID`` policy retired at the end (``LT_KEEP_POLICY=1``
  keeps it).

Plain ``requests`` (gevent-safe once locust has monkey-patched the interpreter).
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import requests
from locust.env import Environment
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

__all__ = [
    "PreflightError",
    "final_stats_csv",
    "preflight",
    "retire_policy",
    "summary_path",
    "write_summary",
]

PREFLIGHT_TIMEOUT_S = 5.0


class PreflightError(Exception):
    """The target cannot run this load test (unreachable, or the token is refused)."""


def preflight(host: str, token: str, *, publishing: bool) -> None:
    """One authenticated ``GET /v1/policies``: raises with a message naming what is wrong."""
    if not host:
        raise PreflightError("no target: pass --host http://<control plane>")
    if not token:
        if publishing:
            raise PreflightError("LT_TOKEN is not set: the publisher cannot publish")
        return
    url = host.rstrip("/") + "/v1/policies"
    try:
        resp = requests.get(
            url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=PREFLIGHT_TIMEOUT_S,
        )
    except requests.RequestException as exc:
        raise PreflightError(f"target {host} unreachable: {type(exc).__name__}: {exc}") from exc
    if resp.status_code in (401, 403):
        raise PreflightError(
            f"LT_TOKEN refused by {host} (HTTP {resp.status_code}): use a token with the"
            " compliance or admin role"
        )
    if resp.status_code != 200:
        raise PreflightError(
            f"target {host} answered GET /v1/policies with HTTP {resp.status_code}:"
            f" {resp.text[:200]} (is it a control plane?)"
        )


def summary_path(csv_prefix: str | None) -> Path | None:
    return None if not csv_prefix else Path(f"{csv_prefix}_summary.json")


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """Atomically (write, then rename): an archiver never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def retire_policy(host: str, token: str, policy_id: str, run: str) -> str:
    """``DELETE /v1/policies/{id}``: ``retired``, ``absent`` (never published), or
    ``failed: <why>``."""
    ended = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        resp = requests.delete(
            f"{host.rstrip('/')}/v1/policies/{policy_id}",
            params={"reason": f"load test run {run} ended {ended}"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=PREFLIGHT_TIMEOUT_S,
        )
    except requests.RequestException as exc:
        return f"failed: {type(exc).__name__}: {exc}"
    if resp.status_code == 404:
        return "absent"
    if resp.status_code // 100 != 2:
        return f"failed: HTTP {resp.status_code}: {resp.text[:200]}"
    return "retired"


def final_stats_csv(environment: Environment, path: str) -> None:
    """The complete ``<prefix>_stats.csv`` (header and every row) at the end of the run,
    replaced atomically (locust's own writer keeps writing to the file it opened)."""
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        StatsCSV(environment, PERCENTILES_TO_REPORT).requests_csv(csv.writer(f))
    os.replace(tmp, path)
