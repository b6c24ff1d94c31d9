"""Benchmark: the service's own per-session costs at 10,000 → 100,000 sessions, no sockets.

What grows worse than linearly in *our* code, separated from sockets, aiohttp and client
processes (and from the open-files limit, which caps a process's sockets: ``bench_scale.py``
measures the real thing up to it). For each N, in this process, a fresh service built by
``controlplane.app.build_app`` (embedded mode: file version log with its writer thread, local
registry, in-process bus; uvloop and the GIL switch interval as ``serve`` sets them, the
start-up ``gc.freeze()`` of the app) holds N control-channel sessions through the same calls
as ``/v1/control``'s ``register`` (``new_session``, ``attach``, ``mark_ready``, ``kick``) with
the real ``ControlTransport`` over a socket stand-in that timestamps each frame. Measured:

* **attach**: wall and CPU µs per session, and the loop's CPU per session over the first and
  the last 3,000 of the N (a per-attach cost that depends on N shows as growth inside one
  run); the collector's CPU time and full passes meanwhile;
* **idle**: the loop's CPU per second with N sessions held and nothing happening (periodic
  scans: the registry sync, gauge export, acknowledgement sweeper);
* **memory**: RSS delta / N (our objects only: no socket, no aiohttp request);
* **publish**: one version that targets every session (each gets a push): ``publish_policy``
  → last frame handed to the socket stand-in, µs per session (and the loop thread's
  context switches meanwhile, ``publish1_ctx_*``: hand-overs to the version log's writer);
  then every app answers ``applied`` (µs per acknowledgement) and a **second** version is
  published (the steady state: collector, acknowledged state); then a **no-op** version
  (same ``set``, another ``priority``: every session records an ``unchanged`` entry,
  nothing is sent).

    .venv/bin/python loadtest/bench_scale_inproc.py --sessions 10000,25000,50000 --runs 3

``--profile DIR``: py-spy of this process during the largest N's phases.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch import SOURCE, process_usage
from payloads import STREAMING_MODEL
from profiling import start_pyspy, stop_pyspy, summarize_collapsed
from report import add_quiet_arg, median_of, print_header, wait_quiet

sys.path.insert(0, str(SOURCE))  # the code measured: this tree, or CP_BENCH_SOURCE
from controlplane.app import SERVICE, build_app
from controlplane.cli import serve
from controlplane.cli.serve import GIL_SWITCH_INTERVAL_S
from controlplane.config import Settings
from controlplane.edges.control_channel import ControlTransport
from controlplane.service.plane import ControlPlane
from sessions.dialects import dialect_for

try:
    from controlplane.push.live import LiveSession
except ImportError:  # commits before the push/ split
    from controlplane.push.engine import LiveSession  # type: ignore[no-redef]

KIND = "streaming-v3"
BATCH = 1000


class SocketStandIn:
    """What ``ControlTransport`` writes to: keeps the time of the last frame."""

    __slots__ = ("closed", "frames", "last_at")

    def __init__(self) -> None:
        self.closed = False
        self.last_at = 0.0
        self.frames = 0

    async def send_str(self, data: str) -> None:
        self.last_at = time.perf_counter()
        self.frames += 1


class GcClock:
    """CPU time the collector took (``gc.callbacks``, thread time: the loop's thread runs
    it), full passes and all passes."""

    def __init__(self) -> None:
        self.full_s = 0.0
        self.all_s = 0.0
        self.full = 0
        self._at = 0.0
        gc.callbacks.append(self._event)

    def _event(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._at = time.thread_time()
            return
        took = time.thread_time() - self._at
        self.all_s += took
        if info["generation"] == 2:
            self.full_s += took
            self.full += 1

    def take(self) -> dict[str, float]:
        """Since the last take: ms in full passes, their count, ms in all passes."""
        out = {"gc_full_ms": round(self.full_s * 1000, 1), "gc_full_n": self.full,
               "gc_all_ms": round(self.all_s * 1000, 1)}  # fmt: skip
        self.full_s = self.all_s = 0.0
        self.full = 0
        return out


async def open_one(svc: ControlPlane, label: str) -> tuple[LiveSession, SocketStandIn]:
    """What ``ControlChannel._register`` and ``_welcome`` do, minus the socket."""
    session, effective = svc.new_session(
        kind=KIND, model=STREAMING_MODEL, labels={"bench": label}, client_config={}
    )
    ws = SocketStandIn()
    transport = ControlTransport(ws, session.id)  # type: ignore[arg-type]
    ls = await svc.attach(session, effective, transport=transport, dialect=dialect_for(KIND),
                          running={}, connect_wire=None)  # fmt: skip
    svc.engine.mark_ready(ls)
    await svc.engine.kick(ls)
    return ls, ws


def policy(label: str, version: int, prompt: str, priority: int = 100) -> dict[str, Any]:
    return {"id": "bench-scale", "version": version, "priority": priority,
            "match": {"labels": {"bench": label}}, "set": {"prompt": prompt}}  # fmt: skip


def context_switches() -> tuple[int, int]:
    """(voluntary, involuntary) context switches of the calling thread so far (Linux; (0, 0)
    elsewhere): a thread hand-over (the GIL to the version log's writer, a wake-up that
    preempts the loop) costs the loop its core on a busy machine."""
    counts: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/thread-self/status").read_text().splitlines():
            if "ctxt_switches" in line:
                key, _, value = line.partition(":")
                counts[key.strip()] = int(value)
    return counts.get("voluntary_ctxt_switches", 0), counts.get("nonvoluntary_ctxt_switches", 0)


async def publish(
    svc: ControlPlane, doc: dict[str, Any], sockets: list[SocketStandIn]
) -> tuple[float, float, tuple[int, int]]:
    """``publish_policy`` → the last frame handed over (or the answer, when none is sent),
    and the loop thread's CPU time until the answer (robust to other load): seconds; and
    the loop thread's (voluntary, involuntary) context switches meanwhile."""
    before = [ws.frames for ws in sockets]
    switches = context_switches()
    cpu = time.thread_time()
    started = time.perf_counter()
    await svc.publish_policy(doc, actor="bench")
    answered = time.perf_counter()
    cpu = time.thread_time() - cpu
    after = context_switches()
    last = max((ws.last_at for ws, n in zip(sockets, before, strict=True) if ws.frames > n),
               default=answered)  # fmt: skip
    return last - started, cpu, (after[0] - switches[0], after[1] - switches[1])


async def one_size(n: int, args: argparse.Namespace, spy_dir: Path | None) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="cp-scale-"))
    settings = Settings(data_dir=tmp / "data", node_id="bench", tokens={}, max_connections=n + 1000,
                        shutdown_grace_s=0.1, ack_timeout_s=120.0)  # fmt: skip
    app = build_app(settings)
    app.freeze()
    await app.startup()
    svc = app[SERVICE]
    label = "scale"
    out: dict[str, Any] = {"sessions": n}

    def spy(phase: str) -> Any:
        return start_pyspy(os.getpid(), spy_dir / f"{phase}-{n}.txt") if spy_dir else None

    def done(proc: Any, phase: str) -> None:
        if proc is not None:
            stop_pyspy(proc)
            assert spy_dir is not None
            text = summarize_collapsed([spy_dir / f"{phase}-{n}.txt"], top=30)
            print(f"# profile: {phase} at {n} sessions", flush=True)
            print("\n".join(f"#   {line}" for line in text.splitlines()), flush=True)

    held: list[tuple[LiveSession, SocketStandIn]] = []
    clock = GcClock()
    try:
        await asyncio.sleep(0.3)
        clock.take()
        rss0, cpu0 = process_usage(os.getpid())
        batches: list[float] = []
        proc = spy("attach")
        started = time.perf_counter()
        while len(held) < n:
            t0 = time.thread_time()  # the loop thread's CPU: the growth inside one run
            for _ in range(min(BATCH, n - len(held))):
                held.append(await open_one(svc, label))
            await asyncio.sleep(0)  # the loop's other work runs between batches, as it would
            batches.append((time.thread_time() - t0) / BATCH * 1e6)
        out["attach_s"] = round(time.perf_counter() - started, 2)
        done(proc, "attach")
        out["attach_first_cpu_us"] = round(sum(batches[:3]) / len(batches[:3]), 1)
        out["attach_last_cpu_us"] = round(sum(batches[-3:]) / len(batches[-3:]), 1)
        out["attach_mean_us"] = round(out["attach_s"] * 1e6 / n, 1)  # wall
        out["attach_cpu_us"] = round((process_usage(os.getpid())[1] - cpu0) * 1e6 / n, 1)
        out.update({f"attach_{k}": v for k, v in clock.take().items()})
        await asyncio.sleep(1.0)  # the registry sync writes the last of them
        out["kib_per_session"] = round((process_usage(os.getpid())[0] - rss0) / n, 2)
        cpu0 = process_usage(os.getpid())[1]
        await asyncio.sleep(args.idle)
        out["idle_cpu_ms_per_s"] = round(
            (process_usage(os.getpid())[1] - cpu0) * 1000 / args.idle, 1
        )
        sockets = [ws for _, ws in held]
        prompt = "This call is recorded for quality. " * 5
        proc = spy("publish1")
        first = await publish(svc, policy(label, 1, prompt), sockets)
        done(proc, "publish1")
        out["publish1_ms"] = round(first[0] * 1000, 1)
        out["publish1_us"] = round(first[0] * 1e6 / n, 2)
        out["publish1_cpu_us"] = round(first[1] * 1e6 / n, 2)
        out["publish1_ctx_vol"], out["publish1_ctx_invol"] = first[2]
        out.update({f"publish1_{k}": v for k, v in clock.take().items()})
        missing = sum(1 for ws in sockets if ws.frames < 1)
        proc = spy("awaiting")
        cpu0 = process_usage(os.getpid())[1]
        await asyncio.sleep(args.idle)  # every session awaits its app's answer (ack timers)
        out["awaiting_cpu_ms_per_s"] = round(
            (process_usage(os.getpid())[1] - cpu0) * 1000 / args.idle, 1
        )
        done(proc, "awaiting")
        engine = svc.engine
        t0 = time.perf_counter()
        for ls, _ in held:  # every app answers `applied` (streaming: unverified, not acked)
            await engine.upstream_acked(ls, status="unverified")
        out["ack_us"] = round((time.perf_counter() - t0) * 1e6 / n, 2)
        await asyncio.sleep(1.0)
        proc = spy("publish2")
        second = await publish(svc, policy(label, 2, prompt + "v2"), sockets)
        done(proc, "publish2")
        out["publish2_ms"] = round(second[0] * 1000, 1)
        out["publish2_us"] = round(second[0] * 1e6 / n, 2)
        out["publish2_cpu_us"] = round(second[1] * 1e6 / n, 2)
        out.update({f"publish2_{k}": v for k, v in clock.take().items()})
        missing += sum(1 for ws in sockets if ws.frames < 2)
        for ls, _ in held:
            await engine.upstream_acked(ls, status="unverified")
        await asyncio.sleep(1.0)
        proc = spy("noop")
        noop = await publish(svc, policy(label, 3, prompt + "v2", priority=101), sockets)
        done(proc, "noop")
        out["noop_ms"] = round(noop[0] * 1000, 1)
        out["noop_us"] = round(noop[0] * 1e6 / n, 2)
        out["noop_cpu_us"] = round(noop[1] * 1e6 / n, 2)
        out.update({f"noop_{k}": v for k, v in clock.take().items()})
        out["missing_frames"] = missing
        out["rss_mib"] = round(process_usage(os.getpid())[0] / 1024, 1)
    finally:
        for ls, _ in held:
            svc.engine.detach(ls.session.id)
        await app.shutdown()
        await app.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def run_child(n: int, args: argparse.Namespace, spy_dir: Path | None) -> dict[str, Any]:
    """One size in a fresh interpreter (RSS and the collector start from the same state)."""
    argv = [sys.executable, __file__, "--child", str(n), "--idle", str(args.idle)]
    if args.gc_threshold:
        argv += ["--gc-threshold", args.gc_threshold]
    if spy_dir is not None:
        argv += ["--profile", str(spy_dir)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=1800)
    lines = done.stdout.splitlines()
    print("\n".join(ln for ln in lines if ln.startswith("#") or ln.startswith(" ")), flush=True)
    if done.returncode != 0 or not lines or not lines[-1].startswith("{"):
        raise RuntimeError(f"size {n} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return dict(json.loads(lines[-1]))


def measure_sizes(args: argparse.Namespace) -> dict[str, Any]:
    sizes = sorted(int(x) for x in args.sessions.split(","))
    per_size: dict[str, Any] = {}
    for n in sizes:
        runs = []
        for run in range(1, args.runs + 1):
            wait_quiet(args.quiet_wait)
            spy_dir = args.profile if args.profile and run == 1 else None
            row = run_child(n, args, spy_dir)
            row["run"] = run
            print(json.dumps(row), flush=True)
            runs.append(row)
        keys = [k for k in runs[0] if k not in ("sessions", "run")]
        summary = {"sessions": n, "runs": len(runs), **median_of(runs, keys)}
        print(f"median: {json.dumps(summary)}", flush=True)
        per_size[str(n)] = {"runs": runs, "median": summary}
    base = per_size[str(sizes[0])]["median"]
    growth = []
    for n in sizes[1:]:
        m = per_size[str(n)]["median"]
        row = {"sessions": n, "vs": sizes[0]}
        for key in ("attach_mean_us", "attach_cpu_us", "attach_last_cpu_us", "kib_per_session",
                    "publish1_us", "publish1_cpu_us", "publish2_us", "publish2_cpu_us", "noop_us",
                    "noop_cpu_us", "ack_us"):  # fmt: skip
            row[f"{key}_x"] = round(m[key] / base[key], 2) if base[key] else None
        for key in ("idle_cpu_ms_per_s", "awaiting_cpu_ms_per_s"):
            row[f"{key}_per_session_x"] = (
                round(m[key] / base[key] * sizes[0] / n, 2) if base[key] else None
            )
        print(f"growth (per session, 1.0 = linear): {json.dumps(row)}", flush=True)
        growth.append(row)
    return {"sizes": per_size, "growth": growth}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="10000,25000,50000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of idle measured")
    parser.add_argument("--profile", type=Path, help="py-spy each size's run 1 into this dir")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # one size, in this process
    parser.add_argument(
        "--gc-threshold",
        help="experiment: gc.set_threshold(a,b,c) instead of serve's (GC_THRESHOLDS)",
    )
    add_quiet_arg(parser)
    args = parser.parse_args()
    if args.child:
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)  # as serve does
        thresholds = getattr(serve, "GC_THRESHOLDS", None)  # (serve of older commits: none)
        if args.gc_threshold:
            thresholds = tuple(int(x) for x in args.gc_threshold.split(","))
        if thresholds:
            gc.set_threshold(*thresholds)
        try:
            import uvloop

            row = uvloop.run(one_size(args.child, args, args.profile))
        except ImportError:
            row = asyncio.run(one_size(args.child, args, args.profile))
        print(json.dumps(row), flush=True)
        return 0
    gc_note = args.gc_threshold or getattr(serve, "GC_THRESHOLDS", "default")
    print_header(f"bench_scale_inproc sessions={args.sessions} runs={args.runs} "
                 f"gc_threshold={gc_note}", sys.argv)  # fmt: skip
    result = measure_sizes(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
