"""Benchmark: memory per live session (RSS delta / N) of the control plane vs a bare server.

For each variant it starts the server as a subprocess, opens ``--warmup`` sessions, reads the
server's RSS, opens ``--sessions`` more, waits ``--settle`` seconds and reads RSS again:
KiB per session = RSS delta / N. Baselines in the same run, same clients, same N:

* ``control`` — ``controlplane serve`` control channel (``/v1/control``, one policy applying)
  vs ``baseline_server.py --mode hold`` (aiohttp: one frame in, one frame out, held).
* ``gateway`` — streaming v3 sessions through the gateway (client socket + upstream socket
  to the emulator) vs ``baseline_server.py --mode proxy`` (an aiohttp relay with one reader
  task per session). Only the gateway / relay process is measured, not the emulator.

Targets (the issue): ≤ 24 KiB per control session, ≤ 48 KiB per gateway session.

    .venv/bin/python loadtest/bench_memory.py --variant control --sessions 5000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clients import ClientPool, ws_url
from launch import (
    Proc,
    new_token,
    process_usage,
    start_baseline,
    start_controlplane,
    start_emulator,
    workdir,
)
from loopback import http_json, raise_nofile
from payloads import STREAMING_MODEL, policy_doc
from report import add_quiet_arg, median_of, print_header, wait_quiet

TARGET_KIB = {"control": 24, "gateway": 48}
STREAMING_PATH = f"/v3/ws?sample_rate=16000&speech_model={STREAMING_MODEL}"


def spec(variant: str, server: Proc, token: str | None) -> dict[str, Any]:
    if variant == "control":
        register = json.dumps(
            {
                "type": "register",
                "kind": "streaming-v3",
                "model": STREAMING_MODEL,
                "labels": {"tenant": "acme", "n": "{i}"},
                "config": {},
            }
        )
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return {
            "url": ws_url(server.ws, "/v1/control"),
            "first": register,
            "expect": "registered",
            "headers": headers,
        }
    return {
        "url": ws_url(server.ws, STREAMING_PATH),
        "expect": "Begin",
        "headers": {"Authorization": "bench-key", "X-Session-Labels": "tenant=acme"},
    }


def measure(
    pool: ClientPool, server: Proc, s: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    def open_n(n: int, base: int) -> int:
        counts = pool.split(n)
        answers = pool.call(
            "open",
            [
                {**s, "count": c, "concurrency": args.concurrency, "base": base + sum(counts[:i])}
                for i, c in enumerate(counts)
            ],
        )
        errors = sum(a["errors"] for a in answers)
        if errors:
            samples = [e for a in answers for e in a["error_samples"]]
            raise RuntimeError(f"{errors} sessions failed to open: {samples[:3]}")
        return sum(a["opened"] for a in answers)

    open_n(args.warmup, 0)
    time.sleep(args.settle)
    before = process_usage(server.pid)[0]
    started = time.perf_counter()
    opened = open_n(args.sessions, args.warmup)
    open_s = time.perf_counter() - started
    time.sleep(args.settle)
    after = process_usage(server.pid)[0]
    pool.call("close", {})
    return {
        "opened": opened,
        "rss_before_mib": round(before / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "kib_per_session": round((after - before) / max(1, opened), 2),
        "open_s": round(open_s, 2),
    }


def one_run(args: argparse.Namespace, pool: ClientPool, variant: str) -> dict[str, Any]:
    with workdir() as tmp:
        emu = start_emulator(tmp) if variant == "gateway" else None
        try:
            token = new_token()
            cp = start_controlplane(
                tmp,
                token,
                emulator_port=emu.port if emu else None,
                lift_upstream_limit=variant == "gateway",
            )
            try:
                status, body = http_json(
                    cp.http + "/v1/policies",
                    method="POST",
                    token=token,
                    body=policy_doc("bench-memory", 1, labels={"tenant": "acme"}),
                )
                if status != 201:
                    raise RuntimeError(f"publish failed: {status} {body}")
                real = measure(pool, cp, spec(variant, cp, token), args)
            finally:
                cp.stop()
            mode = "hold" if variant == "control" else "proxy"
            base = start_baseline(tmp, mode, upstream=emu.ws if emu else None)
            try:
                floor = measure(pool, base, spec(variant, base, None), args)
            finally:
                base.stop()
        finally:
            if emu is not None:
                emu.stop()
    row = {
        "variant": variant,
        "sessions": args.sessions,
        **{f"real_{k}": v for k, v in real.items()},
        **{f"baseline_{k}": v for k, v in floor.items()},
    }
    row["ratio"] = round(real["kib_per_session"] / max(0.01, floor["kib_per_session"]), 2)
    row["target_kib"] = TARGET_KIB[variant]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=("control", "gateway", "both"), default="both")
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--client-procs", type=int, default=0, help="0: 1 per 2,500 sessions")
    parser.add_argument("--json", type=Path)
    add_quiet_arg(parser)
    args = parser.parse_args()
    raise_nofile()
    procs = args.client_procs or min(4, max(1, args.sessions // 2500))
    variants = ["control", "gateway"] if args.variant == "both" else [args.variant]
    print_header(f"bench_memory sessions={args.sessions} variants={','.join(variants)}", sys.argv)
    out: dict[str, Any] = {}
    failed = False
    with ClientPool(procs) as pool:
        for variant in variants:
            runs = []
            for _ in range(args.runs):
                busy = wait_quiet(args.quiet_wait)
                row = one_run(args, pool, variant)
                row["machine_busy_before"] = busy
                runs.append(row)
                print(json.dumps(row), flush=True)
            keys = [
                "real_kib_per_session",
                "baseline_kib_per_session",
                "ratio",
                "real_rss_after_mib",
                "baseline_rss_after_mib",
                "real_open_s",
            ]
            summary = {
                "variant": variant,
                "sessions": args.sessions,
                **median_of(runs, keys),
                "target_kib": TARGET_KIB[variant],
            }
            summary["meets_target"] = summary["real_kib_per_session"] <= TARGET_KIB[variant]
            failed |= any(r["real_opened"] != args.sessions for r in runs)
            print(f"median: {json.dumps(summary)}", flush=True)
            out[variant] = {"runs": runs, "median": summary}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
