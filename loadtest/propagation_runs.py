"""One run of ``bench_propagation.py``, per stack: the real one (``controlplane serve``, and
the emulator for the gateway variant: sessions opened, policy versions published, each
session's receipt) and the floor (the bare ``websockets.broadcast`` server of
``baseline_server.py`` on the same client processes, broadcasting the same frames).

Each publish records where its CPU went: ``serve``'s process and its event-loop thread, the
client processes, the floor server (``launch.process_usage``, ``launch.thread_cpu``).
"""

from __future__ import annotations

import argparse
import json
import os
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
    new_token,
    process_usage,
    start_baseline,
    start_controlplane,
    start_emulator,
    thread_cpu,
)
from loopback import emulator_receipts, http_json, scrape
from payloads import STREAMING_MODEL, marker, policy_doc
from profiling import start_pyspy, stop_pyspy, summarize_collapsed
from report import summary_ms

__all__ = ["SOURCES_PAST", "floor_run", "open_sessions", "real_run"]

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
                    "cp_loop_cpu_s": round(thread_cpu(cp.pid) - loop0, 4),
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
