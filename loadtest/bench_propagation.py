"""Benchmark: policy propagation to N live sessions, against the WebSocket fan-out floor.

One command starts everything on 127.0.0.1 (``controlplane serve`` with a generated token in
CONTROLPLANE_TOKENS, the emulator for the gateway variant, the bare ``websockets`` broadcast
server of ``baseline_server.py``), opens N sessions from ``--client-procs`` client processes,
publishes one policy version and measures, per session, publish → frame received:

* ``--variant control``: control-channel sessions (``/v1/control``); the receipt is the
  ``push`` frame read by the client (``time.time()`` in the client process).
* ``--variant gateway``: streaming v3 sessions through the gateway (``/v3/ws``); the receipt
  is the emulator's timeline ``at`` of the ``UpdateConfiguration`` (the upstream received it).

The publish time is ``time.time()`` just before ``POST /v1/policies`` (the in-process bus
answers after the fan-out). Then, with the same client processes and the same N, the floor:
the bare server broadcasts the same bytes to N connections (``websockets.broadcast``); its
"publish" is the moment the trigger frame is sent (``--floor-repeats`` broadcasts, the median
one kept). Reports p50 / p99 / max (= convergence) for both and the ratios, per run and as
the median of ``--runs`` fresh runs (median of the per-run ratios, and the ratio of the
medians).

    .venv/bin/python loadtest/bench_propagation.py --sessions 1000 --variant control --runs 3

Exit status 0 when every session of every run received its frame.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clients import ClientPool
from launch import cpu_bound_ms, workdir
from loopback import raise_nofile
from propagation_runs import floor_run, real_run
from report import add_quiet_arg, finish, median, median_of, print_header, wait_quiet


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--variant", choices=("control", "gateway"), default="control")
    parser.add_argument("--runs", type=int, default=3, help="fresh stack per run; median reported")
    parser.add_argument("--publishes", type=int, default=1, help="policy versions per run")
    parser.add_argument(
        "--client-procs",
        type=int,
        default=0,
        help="client processes (0: 1 per 2,500 sessions, at least 1, at most 4)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=100, help="handshakes in flight per process"
    )
    parser.add_argument(
        "--floor-repeats", type=int, default=3, help="broadcasts per floor phase (median kept)"
    )
    parser.add_argument("--prompt-chars", type=int, default=165, help="≈300-byte push frame")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds idle before publishing")
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between publishes")
    parser.add_argument(
        "--warmup", type=int, default=200,
        help="sessions opened first (at most a fifth) and left out of open time and memory per "
        "session",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--gc",
        choices=("default", "off", "freeze"),
        default="default",
        help="experiment: serve with gc disabled, or gc.freeze() after warm-up",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy the control plane in run 1 (opening, publishes) into this dir",
    )
    parser.add_argument(
        "--no-lift-upstream-limit",
        dest="lift_upstream_limit",
        action="store_false",
        help="gateway: run serve as built (its upstream client holds ≤100 sockets)",
    )
    parser.add_argument(
        "--baseline-source", type=Path,
        help="also run serve from this source tree (a git archive of another commit) in every "
        "run, against the same floor, alternating which goes first; its medians are reported "
        "apart",
    )  # fmt: skip
    add_quiet_arg(parser)
    return parser


def raise_limits(need: int, *, warn: bool = True) -> int:
    """Open files for ``need`` sockets: the soft limit to the hard one, and the hard one
    itself when it is lower and we may (CAP_SYS_RESOURCE, which root usually has; not in
    every container); the client processes and servers inherit it. Returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, need))
    limit = raise_nofile()
    if warn and limit < need:
        print(f"warning: open-files limit {limit} < {need} needed by the server", file=sys.stderr)
    return limit


def client_procs(args: argparse.Namespace) -> int:
    return args.client_procs or min(4, max(1, args.sessions // 2500))


def measure_run(
    args: argparse.Namespace, pool: ClientPool, run: int
) -> tuple[list[dict[str, Any]], int]:
    """One fresh stack: the real side, then the floor on the same clients; (rows, failures)."""
    busy = wait_quiet(args.quiet_wait)
    rows, failures = [], 0
    sources: list[Path | None] = [None] + ([args.baseline_source] if args.baseline_source else [])
    if run % 2 == 0:
        sources.reverse()  # the baseline goes first in every other run
    with workdir() as tmp:
        reals = {}
        for n, source in enumerate(sources):  # each stack in its own directory
            (tmp / str(n)).mkdir()
            only = args if source is None else argparse.Namespace(**{**vars(args), "profile": None})
            reals[source] = real_run(only, pool, tmp / str(n), run, source)  # (profiled: this tree)
        frames = [p.pop("sample") or "" for p in reals[None]["publishes"]]
        for real in reals.values():
            for p in real["publishes"]:
                p.pop("sample", None)
        floor = floor_run(args, pool, tmp, frames)
    for source in sorted(reals, key=lambda s: s is not None):  # this tree, then the baseline
        real = reals[source]
        for i, (r, f) in enumerate(zip(real["publishes"], floor, strict=True)):
            row = {
                "run": run,
                "publish": i + 1,
                **({"source": str(source)} if source else {}),
                **{k: real[k] for k in RUN_KEYS if k in real},
                "machine_busy_before": busy,
                **{f"real_{k}": v for k, v in r.items()},
                **{f"floor_{k}": v for k, v in f.items()},
            }
            for key in ("p50_ms", "p99_ms", "max_ms"):
                row[f"ratio_{key[:-3]}"] = round(r[key] / f[key], 2) if f[key] else None
            for side, m in (("real", r), ("floor", f)):  # the CPU both cores had to give
                row[f"{side}_cpu_bound_ms"] = cpu_bound_ms(m["cp_cpu_s"], m["clients_cpu_s"])
            failures += (r["received"] != args.sessions) + (f["received"] != args.sessions)
            failures += real["open_errors"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows, failures


RUN_KEYS = ("opened", "open_errors", "open_s", "open_per_s", "open_cpu_us_per_session",
            "cp_rss_mib", "kib_per_session", "open_error_samples")  # fmt: skip
SUMMARY_KEYS = (
    "real_first_ms", "real_p50_ms", "real_p99_ms", "real_max_ms", "real_post_ms",
    "real_server_convergence_ms", "real_cp_cpu_s", "floor_first_ms", "floor_p50_ms",
    "floor_p99_ms", "floor_max_ms", "floor_server_broadcast_ms", "ratio_p50", "ratio_p99",
    "ratio_max", "open_s", "open_per_s", "open_cpu_us_per_session", "cp_rss_mib",
    "kib_per_session", "floor_kib_per_conn", "real_cp_loop_cpu_s", "real_clients_cpu_s",
    "real_cpu_bound_ms", "floor_cp_cpu_s", "floor_clients_cpu_s", "floor_cpu_bound_ms",
)  # fmt: skip


def summarize(
    args: argparse.Namespace, runs: list[dict[str, Any]], failures: int
) -> dict[str, Any]:
    summary_ratios = {}
    for key in ("p50", "p99", "max"):
        real = median([r[f"real_{key}_ms"] for r in runs])
        floor_ = median([r[f"floor_{key}_ms"] for r in runs])
        summary_ratios[f"ratio_of_medians_{key}"] = round(real / floor_, 2) if floor_ else None
    return {
        "variant": args.variant,
        "sessions": args.sessions,
        "samples": len(runs),
        "client_procs": client_procs(args),
        **median_of(runs, SUMMARY_KEYS),
        **summary_ratios,
        "failures": failures,
    }


def main() -> int:
    args = build_parser(__doc__.splitlines()[0]).parse_args()
    raise_limits(args.sessions * (2 if args.variant == "gateway" else 1) + 1000)
    procs = client_procs(args)
    print_header(
        f"bench_propagation variant={args.variant} sessions={args.sessions} client_procs={procs}"
        f" gc={args.gc}",
        sys.argv,
    )
    runs: list[dict[str, Any]] = []
    failures = 0
    with ClientPool(procs) as pool:
        for run in range(1, args.runs + 1):
            rows, failed = measure_run(args, pool, run)
            runs += rows
            failures += failed
    summary = summarize(args, [r for r in runs if "source" not in r], failures)
    if args.baseline_source:  # (failures: of both)
        base = summarize(args, [r for r in runs if "source" in r], failures)
        summary["baseline"] = {"source": str(args.baseline_source), **base}
    return finish(summary, runs, args.json, failures)


if __name__ == "__main__":
    sys.exit(main())
