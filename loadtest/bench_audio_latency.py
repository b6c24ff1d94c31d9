"""Benchmark: latency the gateway adds to the real-time audio path.

N streaming v3 sessions send real-time 50 ms PCM frames (``--tone-ms`` of tone, then
``--silence-ms`` of silence, repeated) for ``--seconds``. The emulator ends each turn when
the silence reaches ``max_turn_silence`` (``--max-silence-ms``) and sends the final ``Turn``
while handling the frame that crossed it. Per turn:

    latency = final Turn read by the client − that frame sent by the client

(``perf_counter`` in the client process; the frame is found from the emulator's
``turns[].end_ms``). This is the round trip client → upstream → client plus the emulator's
work, identical in both variants, measured in the same run:

* ``direct`` — clients connect straight to the emulator (``/v3/ws``);
* ``relay`` — through ``baseline_server.py --mode proxy`` (a bare aiohttp relay, no logic);
* ``gateway`` — through ``controlplane serve`` (``/v3/ws``).

Added latency = gateway − direct (p50, p99); the relay shows what any aiohttp hop costs.
Dropped frames = frames the clients sent − ``audio_messages`` the emulator counted, per
session (the exit status is 1 when any variant dropped one).
``server_cpu_pct`` is the CPU of the process the clients talk to (emulator, relay, gateway)
over the audio phase, in % of one core. ``--profile DIR`` py-spies the gateway in run 1.

    .venv/bin/python loadtest/bench_audio_latency.py --sessions 200 --seconds 20 --runs 3
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
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
from payloads import FRAME_MS, STREAMING_MODEL
from profiling import start_pyspy, stop_pyspy, summarize_collapsed
from report import add_quiet_arg, finish, median_of, print_header, summary_ms, wait_quiet


def latencies(emu: Proc, sessions: list[dict[str, Any]]) -> tuple[list[float], int, int]:
    """(per-turn latencies in seconds, turns without a match, frames dropped) from the
    emulator's turn log and counters: a frame is dropped when the client sent it and the
    emulator never received it (its ``audio_messages`` per session)."""

    def one(s: dict[str, Any]) -> tuple[list[float], int, int]:
        _, body = http_json(f"{emu.http}/_emulator/sessions/{s['id']}")
        dropped = len(s["frames"]) - int(body.get("counters", {}).get("audio_messages", 0))
        received = dict((int(order), t) for order, t in s["turns"])
        out, unmatched = [], 0
        for turn in body.get("turns", []):
            if turn.get("reason") not in ("max_silence", "min_silence"):
                continue
            index = math.ceil(float(turn["end_ms"]) / FRAME_MS) - 1
            got = received.get(int(turn["turn_order"]))
            if got is None or not 0 <= index < len(s["frames"]):
                unmatched += 1
                continue
            out.append(got - s["frames"][index])
        return out, unmatched, dropped

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, sessions))
    return (
        [x for r in results for x in r[0]],
        sum(r[1] for r in results),
        sum(r[2] for r in results),
    )


def variant_run(
    args: argparse.Namespace, pool: ClientPool, tmp: Path, via: str, profile: Path | None = None
) -> dict[str, Any]:
    emu = start_emulator(tmp, settings={"max_closed_sessions": args.sessions + 100})
    cp = None
    try:
        target = emu
        if via == "gateway":
            cp = start_controlplane(
                tmp, new_token(), emulator_port=emu.port, lift_upstream_limit=True
            )
            target = cp
        elif via == "relay":
            cp = start_baseline(tmp, "proxy", upstream=emu.ws)
            target = cp
        query = (
            f"/v3/ws?sample_rate=16000&speech_model={STREAMING_MODEL}"
            f"&max_turn_silence={args.max_silence_ms}&min_turn_silence=100"
        )
        counts = pool.split(args.sessions)
        opened = pool.call(
            "open",
            [
                {
                    "url": ws_url(target.ws, query),
                    "expect": "Begin",
                    "count": c,
                    "concurrency": 50,
                    "headers": {"Authorization": "bench-key"},
                }
                for c in counts
            ],
        )
        if sum(a["errors"] for a in opened):
            raise RuntimeError(f"open failed: {[a['error_samples'] for a in opened]}")
        spy = start_pyspy(target.pid, profile) if profile is not None else None
        cpu0 = process_usage(target.pid)[1]
        started = time.monotonic()
        answers = pool.call(
            "audio",
            {
                "seconds": args.seconds,
                "tone_ms": args.tone_ms,
                "silence_ms": args.silence_ms,
                "drain_s": 1.5,
            },
            timeout=args.seconds + 120,
        )
        cpu = (process_usage(target.pid)[1] - cpu0) / (time.monotonic() - started)
        stop_pyspy(spy)
        sessions = [s for a in answers for s in a["sessions"]]
        lat, unmatched, dropped = latencies(emu, sessions)
        pool.call("close", {})
        return {
            **summary_ms(lat),
            "turns": len(lat),
            "unmatched": unmatched,
            "frames_sent": sum(len(s["frames"]) for s in sessions),
            "frames_dropped": dropped,
            "send_errors": sum(a["errors"] for a in answers),
            "closed": sum(a["closed"] for a in answers),
            "server_cpu_pct": round(cpu * 100, 1),
        }
    finally:
        if cp is not None:
            cp.stop()
        emu.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--tone-ms", type=int, default=1000)
    parser.add_argument("--silence-ms", type=int, default=1000)
    parser.add_argument("--max-silence-ms", type=int, default=400)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--client-procs", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", type=Path, help="py-spy the gateway in run 1 into this dir")
    add_quiet_arg(parser)
    args = parser.parse_args()
    raise_nofile()
    print_header(f"bench_audio_latency sessions={args.sessions} seconds={args.seconds}", sys.argv)
    runs = []
    with ClientPool(args.client_procs) as pool:
        for run in range(1, args.runs + 1):
            profile = args.profile / "gateway-audio.txt" if args.profile and run == 1 else None
            busy = wait_quiet(args.quiet_wait)
            with workdir() as tmp:
                direct = variant_run(args, pool, tmp, "direct")
                relay = variant_run(args, pool, tmp, "relay")
                via = variant_run(args, pool, tmp, "gateway", profile)
            row = {
                "run": run,
                "sessions": args.sessions,
                "machine_busy_before": busy,
                **{f"direct_{k}": v for k, v in direct.items()},
                **{f"relay_{k}": v for k, v in relay.items()},
                **{f"gateway_{k}": v for k, v in via.items()},
            }
            row["added_p50_ms"] = round(via["p50_ms"] - direct["p50_ms"], 2)
            row["added_p99_ms"] = round(via["p99_ms"] - direct["p99_ms"], 2)
            row["relay_added_p50_ms"] = round(relay["p50_ms"] - direct["p50_ms"], 2)
            row["relay_added_p99_ms"] = round(relay["p99_ms"] - direct["p99_ms"], 2)
            row["cpu_ratio"] = round(via["server_cpu_pct"] / max(0.1, relay["server_cpu_pct"]), 2)
            if profile is not None:
                print(f"# profile of the gateway during the audio phase ({profile}):")
                print(summarize_collapsed([profile]), flush=True)
            runs.append(row)
            print(json.dumps(row), flush=True)
    keys = [
        "direct_p50_ms",
        "direct_p99_ms",
        "gateway_p50_ms",
        "gateway_p99_ms",
        "added_p50_ms",
        "added_p99_ms",
        "relay_p50_ms",
        "relay_p99_ms",
        "relay_added_p50_ms",
        "relay_added_p99_ms",
        "gateway_server_cpu_pct",
        "relay_server_cpu_pct",
        "direct_server_cpu_pct",
        "cpu_ratio",
        "direct_turns",
        "gateway_turns",
        "gateway_frames_sent",
        "gateway_frames_dropped",
        "direct_frames_dropped",
    ]
    summary = {"sessions": args.sessions, **median_of(runs, keys)}
    failures = sum(
        r[f"{v}_turns"] == 0 or bool(r[f"{v}_send_errors"]) or bool(r[f"{v}_frames_dropped"])
        for v in ("direct", "relay", "gateway")
        for r in runs
    )
    return finish(summary, runs, args.json, failures)


if __name__ == "__main__":
    sys.exit(main())
