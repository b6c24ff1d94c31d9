"""Benchmark: control-channel sessions per process, 10,000 → 50,000, and how each figure scales.

For each N of ``--sessions`` (default 10,000, 25,000, 50,000), ``--runs`` fresh stacks of
``bench_propagation.py --variant control`` (the same code): ``controlplane serve`` with its
socket cap (``max_connections``) above N, ``--warmup`` sessions first, then the other
N − warmup timed (**open time**, rate, server CPU per session) with the server's RSS
before and after them (**memory per session** = RSS delta / sessions), one publish that
targets every session (**propagation**: publish → last ``push`` frame read by a client, p50,
p99), then the floor on the same clients and N: ``websockets.broadcast`` of the same bytes
(and its RSS per connection). Limits are raised as needed: the open-files limit (soft, and
hard when we are root) and, past 20,000 sessions, one loopback source address per client
process (~28,000 ephemeral ports per source and destination).

Reports each N's medians and, against the smallest N, how each grows: convergence ×, open
time per session ×, server CPU per session ×, memory per session ×. The issue's targets:
50,000 sessions converge within 5.5× the 10,000 figure (5× the sessions), ≤ 24 KiB per
session.

    .venv/bin/python loadtest/bench_scale.py --sessions 10000,25000,50000 --runs 3
    .venv/bin/python loadtest/bench_scale.py --sessions 10000,50000 --runs 1 --profile /tmp/prof

``--profile DIR`` (py-spy, run 1 of each N): the server while the sessions open and while it
fans out the publish. Exit status 0 when every session of every run opened and received; 3
when a size was not measured because one process may not hold that many sockets here (the
open-files hard limit, which only CAP_SYS_RESOURCE may raise).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_propagation import build_parser, client_procs, measure_run, raise_limits, summarize
from clients import ClientPool
from report import print_header

TARGET_GROWTH = 5.5  # 50,000 sessions converge within 5.5× the 10,000 figure
TARGET_KIB = 24.0
SPARE_FDS = 300  # the server's own files (logs, version log, listening socket) besides sessions
# figure -> what it is divided by to compare sizes (per session, or as is)
GROWTH = {
    "real_max_ms": None,
    "floor_max_ms": None,
    "open_s": "per session",
    "open_cpu_us_per_session": None,
    "kib_per_session": None,
    "real_cp_cpu_s": None,
}


def main() -> int:
    parser = build_parser(__doc__.splitlines()[0])
    parser.set_defaults(variant="control", runs=3, client_procs=4, timeout=180.0)
    parser.add_argument(
        "--sessions-list",
        default="10000,25000,50000",
        help="comma-separated session counts (--sessions is ignored); 'max': the most the "
        "open-files limit lets one process hold",
    )
    args = parser.parse_args()
    if args.variant != "control":
        parser.error("bench_scale measures control-channel sessions only (--variant control)")
    wanted = [n for n in args.sessions_list.split(",") if n != "max"]
    limit = raise_limits(max([int(n) for n in wanted] or [0]) + SPARE_FDS, warn=False)
    ceiling = (limit - SPARE_FDS) // 500 * 500  # the most sockets one server process may hold
    sizes = sorted({ceiling if n == "max" else int(n) for n in args.sessions_list.split(",")})
    skipped = [n for n in sizes if n > ceiling]
    sizes = [n for n in sizes if n <= ceiling]
    procs = args.client_procs
    print_header(
        f"bench_scale sessions={','.join(map(str, sizes))} runs={args.runs} client_procs={procs}",
        sys.argv,
    )
    if skipped:
        print(f"# NOT MEASURED: {', '.join(map(str, skipped))} sessions: one process may hold "
              f"{ceiling} sockets here (open-files limit {limit}; raising the hard limit needs "
              "CAP_SYS_RESOURCE). `--sessions-list ...,max` measures the largest size that "
              "fits.", flush=True)  # fmt: skip
    if not sizes:
        return 3
    summaries: list[dict[str, Any]] = []
    out: dict[str, Any] = {"sizes": {}}
    failures = 0
    with ClientPool(procs) as pool:
        for n in sizes:
            args.sessions = n
            assert client_procs(args) == procs
            runs: list[dict[str, Any]] = []
            failed = 0
            for run in range(1, args.runs + 1):
                rows, bad = measure_run(args, pool, run)
                runs += rows
                failed += bad
            summary = summarize(args, runs, failed)
            failures += failed
            print(f"median: {json.dumps(summary)}", flush=True)
            summaries.append(summary)
            out["sizes"][str(n)] = {"runs": runs, "median": summary}
    growth = scaling(summaries)
    for row in growth:
        print(f"growth: {json.dumps(row)}", flush=True)
    out["growth"] = growth
    out["not_measured"] = skipped
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 1 if failures else 3 if skipped else 0


def scaling(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each size against the smallest: sessions ×, and each figure × (per session where it
    is a total); the targets of the issue checked where they apply."""
    base = summaries[0]
    rows = []
    for s in summaries[1:]:
        sessions_x = s["sessions"] / base["sessions"]
        row: dict[str, Any] = {"sessions": s["sessions"], "vs": base["sessions"]}
        row["sessions_x"] = round(sessions_x, 2)
        for key, per in GROWTH.items():
            if not base.get(key):
                continue
            x = s[key] / base[key]
            row[f"{key}_x"] = round(x / sessions_x if per else x, 2)
        row["convergence_within_5_5x"] = (
            row.get("real_max_ms_x", float("inf")) <= TARGET_GROWTH * sessions_x / 5
        )
        row["kib_per_session_within_24"] = s["kib_per_session"] <= TARGET_KIB
        rows.append(row)
    return rows


if __name__ == "__main__":
    sys.exit(main())
