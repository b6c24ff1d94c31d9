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
import os
import resource
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clients import ClientPool, ws_url
from launch import (
    Proc,
    cpu_bound_ms,
    new_token,
    process_usage,
    start_baseline,
    start_controlplane,
    start_emulator,
    thread_cpu,
    workdir,
)
from loopback import emulator_receipts, http_json, raise_nofile, scrape
from payloads import STREAMING_MODEL, marker, policy_doc
from profiling import start_pyspy, stop_pyspy, summarize_collapsed
from report import add_quiet_arg, finish, median, median_of, print_header, summary_ms, wait_quiet

STREAMING_QUERY = f"/v3/ws?sample_rate=16000&speech_model={STREAMING_MODEL}"
API_KEY = "bench-key"
# Loopback offers ~28,000 ephemeral ports (net.ipv4.ip_local_port_range) per source address
# and destination: past this many sessions each client process binds its own 127.0.0.x.
SOURCES_PAST = 20_000


def connection_cap(sessions: int) -> dict[str, str]:
    """serve's socket cap (``max_connections``, 20,000 by default) lifted above ``sessions``."""
    return {"CONTROLPLANE_MAX_CONNECTIONS": str(max(20_000, sessions + 1_000))}


def open_sessions(
    pool: ClientPool,
    variant: str,
    cp_ws: str,
    n: int,
    label: str,
    concurrency: int,
    token: str,
    auto_ack: bool,
) -> dict[str, Any]:
    counts = pool.split(n)
    if variant == "control":
        register = json.dumps(
            {
                "type": "register",
                "kind": "streaming-v3",
                "model": STREAMING_MODEL,
                "labels": {"bench": label},
                "config": {},
            }
        )
        spec = {
            "url": ws_url(cp_ws, "/v1/control"),
            "first": register,
            "expect": "registered",
            "auto_ack": auto_ack,
            "headers": {"Authorization": f"Bearer {token}"},
        }
    else:
        spec = {
            "url": ws_url(cp_ws, STREAMING_QUERY),
            "expect": "Begin",
            "headers": {"X-Session-Labels": f"bench={label}", "Authorization": API_KEY},
        }
    return _open(pool, spec, counts, concurrency)


def _open(
    pool: ClientPool, spec: dict[str, Any], counts: list[int], concurrency: int
) -> dict[str, Any]:
    args = [
        {**spec, "count": c, "concurrency": concurrency, "base": sum(counts[:i])}
        for i, c in enumerate(counts)
    ]
    if sum(counts) > SOURCES_PAST:  # one source address per client process (ephemeral ports)
        for i, a in enumerate(args):
            a["source"] = f"127.0.0.{2 + i}"
    started = time.perf_counter()
    answers = pool.call("open", args)
    return {
        "opened": sum(a["opened"] for a in answers),
        "errors": sum(a["errors"] for a in answers),
        "error_samples": [s for a in answers for s in a["error_samples"]][:3],
        "ids": [i for a in answers for i in a["ids"]],
        "open_s": time.perf_counter() - started,
    }


def open_measured(
    args: argparse.Namespace, pool: ClientPool, cp: Proc, label: str, token: str, run: int
) -> dict[str, Any]:
    """Open ``args.sessions``: ``args.warmup`` of them first (not measured), then the rest,
    timed, with the server's RSS before them (``rss_before_kib``) and, with ``--profile``,
    a py-spy of the server while they open (run 1)."""

    def batch(n: int) -> dict[str, Any]:  # apps answer pushes only when another one follows
        return open_sessions(pool, args.variant, cp.ws, n, label, args.concurrency, token,
                             auto_ack=args.publishes > 1)  # fmt: skip

    nothing: dict[str, Any] = {"opened": 0, "errors": 0, "error_samples": [], "ids": []}
    warmup = min(args.warmup, args.sessions // 5)
    warm = batch(warmup) if warmup else nothing
    if warmup:
        time.sleep(min(args.settle, 1.0))
    rss_before, cpu0 = process_usage(cp.pid)
    spy = None
    if args.profile and run == 1:
        where = args.profile / f"open-{args.variant}-{args.sessions}.txt"
        spy = start_pyspy(cp.pid, where)
    rest = batch(args.sessions - warmup)
    stop_pyspy(spy)
    if spy is not None:
        print(f"# profile of the control plane while {rest['opened']} sessions open:")
        print(summarize_collapsed([where]), flush=True)
    measured = rest["opened"]
    out = {
        "opened": warm["opened"] + measured,
        "open_errors": warm["errors"] + rest["errors"],
        "measured": measured,
        "open_s": round(rest["open_s"], 2),
        "open_per_s": round(measured / max(1e-9, rest["open_s"])),
        "open_cpu_us_per_session": round(
            (process_usage(cp.pid)[1] - cpu0) * 1e6 / max(1, measured), 1
        ),
        "rss_before_kib": rss_before,
        "ids": warm["ids"] + rest["ids"],
    }
    samples = warm["error_samples"] + rest["error_samples"]
    if samples:
        out["open_error_samples"] = samples[:3]
    return out


def real_run(
    args: argparse.Namespace, pool: ClientPool, tmp: Path, run: int, source: Path | None = None
) -> dict[str, Any]:
    token = new_token()
    label = uuid.uuid4().hex[:12]
    emu = (
        start_emulator(tmp, settings={"max_closed_sessions": 10})
        if args.variant == "gateway"
        else None
    )
    cp = start_controlplane(
        tmp,
        token,
        emulator_port=emu.port if emu else None,
        lift_upstream_limit=args.variant == "gateway" and args.lift_upstream_limit,
        gc_mode=args.gc,
        extra_env=connection_cap(args.sessions * (2 if args.variant == "gateway" else 1)),
        source=source,
    )
    out: dict[str, Any] = {"run": run, "variant": args.variant, "sessions": args.sessions}
    try:
        out.update(open_measured(args, pool, cp, label, token, run))
        time.sleep(args.settle)
        out["kib_per_session"] = round(
            (process_usage(cp.pid)[0] - out.pop("rss_before_kib")) / max(1, out["measured"]), 2
        )
        if args.gc == "freeze":
            os.kill(cp.pid, signal.SIGUSR1)  # warm-up over: gc.collect() + gc.freeze()
            time.sleep(1.0)
        out["cp_rss_mib"] = round(process_usage(cp.pid)[0] / 1024, 1)
        samples = []
        profiles: list[Path] = []
        for k in range(args.publishes):
            policy_id = "bench-propagation"
            mark = marker(policy_id, k + 1)
            pool.call("arm", {"marker": mark})
            doc = policy_doc(
                policy_id, k + 1, labels={"bench": label}, prompt_chars=args.prompt_chars
            )
            before = scrape(cp.http)
            spy = None
            if args.profile and run == 1:  # the fan-out only: publish until the POST answers
                profiles.append(
                    args.profile / f"propagation-{args.variant}-{args.sessions}-{k}.txt"
                )
                spy = start_pyspy(cp.pid, profiles[-1])
            cpu0, loop0, clients0 = process_usage(cp.pid)[1], thread_cpu(cp.pid), pool.cpu_s()
            published = time.time()
            status, body = http_json(cp.http + "/v1/policies", method="POST", body=doc, token=token)
            answered = time.time()
            stop_pyspy(spy)
            if status != 201:
                raise RuntimeError(f"publish failed: {status} {body}")
            if args.variant == "control":
                got = pool.call("collect", {"timeout": args.timeout})
                times = [t for g in got for t in g["times"]]
                sample = next((g["sample"] for g in got if g["sample"]), None)
            else:
                times = emulator_receipts(
                    emu.http,
                    out["ids"],
                    mark,  # type: ignore[union-attr]
                    expected=(k + 1) * out["opened"],
                    timeout=args.timeout,
                )
                sample = json.dumps({"type": "UpdateConfiguration", "prompt": doc["set"]["prompt"]})
            after = scrape(cp.http)
            lat = [t - published for t in times]
            conv_sum = after.get("controlplane_convergence_seconds_sum", 0.0) - before.get(
                "controlplane_convergence_seconds_sum", 0.0
            )
            samples.append(
                {
                    **summary_ms(lat),
                    "first_ms": _first_ms(lat),
                    "received": len(lat),
                    "post_ms": round((answered - published) * 1000, 1),
                    "server_convergence_ms": round(conv_sum * 1000, 1),
                    "cp_cpu_s": round(process_usage(cp.pid)[1] - cpu0, 3),
                    "cp_loop_cpu_s": round(thread_cpu(cp.pid) - loop0, 3),
                    "clients_cpu_s": round(pool.cpu_s() - clients0, 3),
                    "frame_bytes": len(sample or ""),
                    "sample": sample,
                }
            )
            time.sleep(args.gap)
        if profiles:
            print(f"# profile of the control plane from publish to answer ({profiles[0].parent}):")
            print(summarize_collapsed(profiles), flush=True)
        out["publishes"] = samples
        pool.call("close", {})
    finally:
        cp.stop()
        if emu:
            emu.stop()
    return out


def _first_ms(lat: list[float]) -> float | None:
    """The first receipt (publish -> first frame: what happens before the fan-out)."""
    return round(min(lat) * 1000, 2) if lat else None


def floor_run(
    args: argparse.Namespace, pool: ClientPool, tmp: Path, frames: list[str]
) -> list[dict[str, Any]]:
    from websockets.sync.client import connect

    floor = start_baseline(tmp, "broadcast")
    try:
        counts = pool.split(args.sessions)
        rss_before = process_usage(floor.pid)[0]
        opened = _open(pool, {"url": ws_url(floor.ws, "/floor")}, counts, args.concurrency)
        if opened["errors"]:
            raise RuntimeError(
                f"floor: {opened['errors']} connections failed: {opened['error_samples']}"
            )
        time.sleep(args.settle)
        per_conn = (process_usage(floor.pid)[0] - rss_before) / max(1, opened["opened"])
        samples = []
        with connect(ws_url(floor.ws, "/trigger"), compression=None) as trigger:
            for k, frame in enumerate(frames):
                mark = marker("bench-propagation", k + 1)
                repeats = []
                for _ in range(args.floor_repeats):  # cheap: the median repeat is the floor
                    pool.call("arm", {"marker": mark})
                    cpu0, clients0 = process_usage(floor.pid)[1], pool.cpu_s()
                    published = time.time()
                    trigger.send(frame)
                    server = json.loads(trigger.recv(timeout=args.timeout))
                    got = pool.call("collect", {"timeout": args.timeout})
                    cpu = process_usage(floor.pid)[1] - cpu0, pool.cpu_s() - clients0
                    lat = [t - published for g in got for t in g["times"]]
                    repeats.append(
                        {
                            **summary_ms(lat),
                            "first_ms": _first_ms(lat),
                            "received": len(lat),
                            "server_broadcast_ms": round(server["elapsed_s"] * 1000, 1),
                            "cp_cpu_s": round(cpu[0], 3),  # (the floor server's)
                            "clients_cpu_s": round(cpu[1], 3),
                            "kib_per_conn": round(per_conn, 2),
                        }
                    )
                    time.sleep(args.gap)
                repeats.sort(key=lambda r: r["max_ms"])
                samples.append(repeats[len(repeats) // 2])
        pool.call("close", {})
        return samples
    finally:
        floor.stop()


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
