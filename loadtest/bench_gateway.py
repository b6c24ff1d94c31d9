"""Benchmark: a policy push through the gateway, against a bare relay pushing the same frame.

Per run, one emulator (``python -m emulator``) serves two phases in turn (the order alternates
from run to run), each with the same client processes and the same N streaming v3 sessions:

* ``gateway``: ``controlplane serve`` proxies ``/v3/ws`` to the emulator; one policy version
  is published (``POST /v1/policies``, ``time.time()`` just before) and the gateway pushes an
  ``UpdateConfiguration`` on each session's upstream leg.
* ``relay`` (the floor): ``baseline_server.py --mode proxy``, a bare aiohttp relay with the
  same kind of upstream legs (one ``aiohttp`` client WebSocket per session), is told to push
  the same frame (``POST /_push``, ``time.time()`` just before) and writes it on every leg.

Both are timed to the same receipt: the emulator's timeline ``at`` of that
``UpdateConfiguration`` (the moment the emulator's session read it, before parsing it), so
the emulator's own work — parsing and applying every update on one core — is in both the
real figure and the floor. The relay's frame is checked equal to what the emulator received
from the gateway. Reports first / p50 / p99 / max (= convergence) for both phases and their
ratios, per run and as the median of the per-run ratios over ``--runs`` runs; also, per
phase, when the push was answered (the gateway's ``POST`` answers after its fan-out wrote
every frame, the relay's after its loop: ``ratio_answered`` compares the hops without the
emulator's queue), the hop's and the emulator's CPU seconds for the push.

    .venv/bin/python loadtest/bench_gateway.py --sessions 2000 --runs 5

Exit status 0 when every session of every phase of every run got its frame.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
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
from loopback import emulator_receipts, http_json, raise_nofile
from payloads import STREAMING_MODEL, marker, policy_doc
from profiling import start_pyspy, stop_pyspy, summarize_collapsed
from report import add_quiet_arg, finish, median, median_of, print_header, summary_ms, wait_quiet

STREAMING_QUERY = f"/v3/ws?sample_rate=16000&speech_model={STREAMING_MODEL}"
API_KEY = "bench-key"
POLICY_ID = "bench-gateway"
PHASES = ("gateway", "relay")
# The sessions send no audio: each sends this once it is open (the gateway closes a /v3/ws
# session whose first frame does not come within 10 s; a 5,000-session open on a busy machine
# takes longer than that). The emulator logs it; it is not an update.
FIRST_FRAME = json.dumps({"type": "KeepAlive"})


def update_frame(prompt: str) -> str:
    """The text the gateway writes upstream for a ``prompt`` push (``json.dumps`` of the
    Streaming v3 ``UpdateConfiguration``); checked against the emulator's receipt."""
    return json.dumps({"type": "UpdateConfiguration", "prompt": prompt})


def open_sessions(
    pool: ClientPool, ws_base: str, n: int, label: str, concurrency: int
) -> dict[str, Any]:
    spec = {
        "url": ws_url(ws_base, STREAMING_QUERY),
        "first": FIRST_FRAME,
        "expect": "Begin",
        "headers": {"X-Session-Labels": f"bench={label}", "Authorization": API_KEY},
        "concurrency": concurrency,
    }
    counts = pool.split(n)
    args = [{**spec, "count": c, "base": sum(counts[:i])} for i, c in enumerate(counts)]
    started = time.perf_counter()
    answers = pool.call("open", args)
    return {
        "opened": sum(a["opened"] for a in answers),
        "errors": sum(a["errors"] for a in answers),
        "error_samples": [s for a in answers for s in a["error_samples"]][:3],
        "ids": [i for a in answers for i in a["ids"]],
        "open_s": time.perf_counter() - started,
    }


def updates_seen(emu: Proc) -> int:
    _, stats = http_json(emu.http + "/_emulator/stats")
    return int(stats["kinds"]["streaming-v3"]["updates"])


def wait_updates(emu: Proc, expected: int, timeout: float) -> None:
    """Wait (bounded) until the emulator counted ``expected`` streaming updates in all."""
    deadline = time.monotonic() + timeout
    while updates_seen(emu) < expected and time.monotonic() < deadline:
        time.sleep(0.02)


def wait_emulator_idle(emu: Proc, timeout: float) -> int:
    """Wait until the emulator holds no streaming session (the previous phase's legs are
    closed); returns how many are still open."""
    deadline = time.monotonic() + timeout
    current = -1
    while time.monotonic() < deadline:
        _, stats = http_json(emu.http + "/_emulator/stats")
        current = int(stats["kinds"]["streaming-v3"]["sessions_current"])
        if current == 0:
            break
        time.sleep(0.1)
    return current


def received_message(emu: Proc, upstream_id: str, mark: str) -> Any:
    _, body = http_json(f"{emu.http}/_emulator/sessions/{upstream_id}")
    for entry in body.get("timeline", []):
        if mark in json.dumps(entry.get("message")):
            return entry["message"]
    return None


def phase(
    args: argparse.Namespace,
    pool: ClientPool,
    tmp: Path,
    emu: Proc,
    name: str,
    run: int,
    docs: list[dict[str, Any]],
) -> dict[str, Any]:
    """One phase on a fresh hop (gateway or relay) to ``emu``: open, push, time, close."""
    token = new_token()
    label = uuid.uuid4().hex[:12]
    if name == "gateway":
        env = dict(item.split("=", 1) for item in args.serve_env)
        hop = start_controlplane(tmp, token, emulator_port=emu.port, lift_upstream_limit=True,
                                 extra_env=env)  # fmt: skip
        docs = [{**d, "match": {"labels": {"bench": label}}} for d in docs]
    else:
        hop = start_baseline(tmp, "proxy", upstream=emu.ws)
    out: dict[str, Any] = {}
    try:
        opened = open_sessions(pool, hop.ws, args.sessions, label, args.concurrency)
        out.update(opened=opened["opened"], open_errors=opened["errors"],
                   open_s=round(opened["open_s"], 2))  # fmt: skip
        if opened["errors"]:
            out["open_error_samples"] = opened["error_samples"]
        time.sleep(args.settle)
        out["hop_rss_mib"] = round(process_usage(hop.pid)[0] / 1024, 1)
        pushes = []
        profiles: list[Path] = []
        for k, doc in enumerate(docs):
            mark = marker(POLICY_ID, k + 1)
            before = updates_seen(emu)
            spy = None
            if args.profile and run == 1:
                profiles.append(args.profile / f"gateway-{name}-{args.sessions}-{k}.txt")
                spy = start_pyspy(hop.pid, profiles[-1])
            cpu0, emu_cpu0 = process_usage(hop.pid)[1], process_usage(emu.pid)[1]
            published = time.time()
            if name == "gateway":
                status, body = http_json(hop.http + "/v1/policies", method="POST", body=doc,
                                         token=token)  # fmt: skip
                ok = status == 201
            else:
                status, body = _push(hop, update_frame(doc["set"]["prompt"]))
                ok = status == 200 and body.get("sent") == opened["opened"]
            answered = time.time()
            hop_cpu = process_usage(hop.pid)[1] - cpu0
            stop_pyspy(spy)
            if not ok:
                raise RuntimeError(f"{name}: push failed: {status} {body}")
            expected = before + opened["opened"]
            wait_updates(emu, expected, args.timeout)
            emu_cpu = process_usage(emu.pid)[1] - emu_cpu0  # before reading the timelines
            times = emulator_receipts(emu.http, opened["ids"], mark, expected, args.timeout)
            lat = [t - published for t in times]
            push: dict[str, Any] = {
                "first_ms": round(min(lat) * 1000, 2) if lat else None,
                **summary_ms(lat),
                "received": len(lat),
                "answered_ms": round((answered - published) * 1000, 1),
                "hop_cpu_s": round(hop_cpu, 3),
                "emulator_cpu_s": round(emu_cpu, 3),
            }
            if name == "gateway" and opened["ids"]:  # the relay pushes exactly these bytes
                got = received_message(emu, opened["ids"][0], mark)
                frame = update_frame(doc["set"]["prompt"])
                push["frame_bytes"] = len(frame)
                push["frame_matches"] = got == json.loads(frame)
            pushes.append(push)
            time.sleep(args.gap)
        if profiles:
            print(f"# profile of the {name} from push to answer ({profiles[0].parent}):")
            print(summarize_collapsed(profiles), flush=True)
        out["pushes"] = pushes
        pool.call("close", {})
    finally:
        hop.stop()
    left = wait_emulator_idle(emu, args.timeout)
    if left:
        raise RuntimeError(f"{name}: the emulator still holds {left} sessions after the phase")
    return out


def _push(relay: Proc, frame: str) -> tuple[int, Any]:
    import urllib.request

    req = urllib.request.Request(relay.http + "/_push", data=frame.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.status, json.loads(resp.read())


def one_run(args: argparse.Namespace, pool: ClientPool, run: int) -> list[dict[str, Any]]:
    docs = [
        policy_doc(POLICY_ID, k + 1, prompt_chars=args.prompt_chars) for k in range(args.publishes)
    ]
    order = PHASES if run % 2 else PHASES[::-1]
    results: dict[str, dict[str, Any]] = {}
    with workdir() as tmp:
        emu = start_emulator(tmp, settings={"max_closed_sessions": 10})
        try:
            for name in order:
                results[name] = phase(args, pool, tmp, emu, name, run, docs)
                time.sleep(args.settle)
        finally:
            emu.stop()
    rows = []
    gw, relay = results["gateway"], results["relay"]
    for k in range(args.publishes):
        g, r = gw["pushes"][k], relay["pushes"][k]
        row: dict[str, Any] = {"run": run, "publish": k + 1, "first": order[0]}
        for name, res, push in (("gateway", gw, g), ("relay", relay, r)):
            row.update({f"{name}_{key}": v for key, v in push.items()})
            row.update({f"{name}_{key}": res[key] for key in ("opened", "open_s", "hop_rss_mib")})
            row[f"{name}_open_errors"] = res["open_errors"]
        for key in ("p50_ms", "p99_ms", "max_ms", "answered_ms"):
            row[f"ratio_{key[:-3]}"] = round(g[key] / r[key], 2) if r[key] else None
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3, help="fresh stack per run; median reported")
    parser.add_argument("--publishes", type=int, default=1, help="pushes per phase")
    parser.add_argument(
        "--client-procs", type=int, default=0,
        help="client processes (0: 1 per 2,500 sessions, at least 1, at most 4)",
    )  # fmt: skip
    parser.add_argument(
        "--concurrency", type=int, default=100, help="handshakes in flight per process"
    )
    parser.add_argument(
        "--prompt-chars", type=int, default=255, help="≈300-byte UpdateConfiguration frame"
    )
    parser.add_argument("--settle", type=float, default=2.0, help="seconds idle before pushing")
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between pushes")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--profile", type=Path, help="py-spy both hops during run 1's pushes into this dir"
    )
    parser.add_argument(
        "--serve-env", action="append", default=[], metavar="CONTROLPLANE_X=V",
        help="experiment: an environment setting for serve (repeatable)",
    )  # fmt: skip
    add_quiet_arg(parser)
    args = parser.parse_args()
    for item in args.serve_env:
        if not item.startswith("CONTROLPLANE_") or "=" not in item:
            parser.error(f"--serve-env {item!r}: expected CONTROLPLANE_NAME=VALUE")
    limit = raise_nofile()
    need = args.sessions * 2 + 200
    if limit < need:
        print(f"warning: open-files limit {limit} < {need} needed by the hop", file=sys.stderr)
    procs = args.client_procs or min(4, max(1, args.sessions // 2500))
    print_header(f"bench_gateway sessions={args.sessions} client_procs={procs}", sys.argv)
    rows: list[dict[str, Any]] = []
    failures = 0
    with ClientPool(procs) as pool:
        for run in range(1, args.runs + 1):
            busy = wait_quiet(args.quiet_wait) if args.quiet_wait > 0 else None
            for row in one_run(args, pool, run):
                row["machine_busy_before"] = busy
                for name in PHASES:
                    failures += row[f"{name}_received"] != args.sessions
                    failures += row[f"{name}_open_errors"]
                failures += not row.get("gateway_frame_matches", False)
                rows.append(row)
                print(json.dumps(row), flush=True)
    measures = ("first_ms", "p50_ms", "p99_ms", "max_ms", "answered_ms", "hop_cpu_s",
                "emulator_cpu_s", "open_s", "hop_rss_mib")  # fmt: skip
    keys = [f"{name}_{key}" for name in PHASES for key in measures]
    keys += ["ratio_p50", "ratio_p99", "ratio_max", "ratio_answered"]
    summary: dict[str, Any] = {
        "sessions": args.sessions,
        "samples": len(rows),
        "client_procs": procs,
        "frame_bytes": rows[0].get("gateway_frame_bytes") if rows else None,
        **median_of(rows, keys),
    }
    for key in ("p50", "p99", "max"):
        real = median([r[f"gateway_{key}_ms"] for r in rows])
        floor = median([r[f"relay_{key}_ms"] for r in rows])
        summary[f"ratio_of_medians_{key}"] = round(real / floor, 2) if floor else None
    summary["ratios_max"] = [r["ratio_max"] for r in rows]
    summary["failures"] = failures
    return finish(summary, rows, args.json, failures)


if __name__ == "__main__":
    sys.exit(main())
