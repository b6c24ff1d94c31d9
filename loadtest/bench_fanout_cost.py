"""Benchmark: our own Python per session of a control-channel fan-out, in one process.

A fresh service (``build_app``, embedded mode, as ``bench_scale_inproc.py`` builds it) holds
N control-channel sessions whose ``ControlTransport`` writes real frames to a stand-in
asyncio transport (no socket: the kernel's share of a write is left out, it is the floor's
too); then ``--publishes`` policy versions target every session, each app answering
``applied`` in between (not measured). Per publish: the loop thread's CPU per session.

``--callgrind``: the same under ``valgrind --tool=callgrind`` with instrumentation on only
during the publishes, reported as instructions per session of the loop thread (total, and
without OpenSSL's sha256, whose cost valgrind's CPU model inflates); the registry sync and
the sweeper are parked for it (their ticks would land in a publish or not, by timing), so two
runs of one tree agree within 0.1 %: an A/B of a few percent is visible, which the
10,000-session benchmark on this shared machine cannot show (docs/benchmarks.md, session 10).

    .venv/bin/python loadtest/bench_fanout_cost.py --sessions 2000 --callgrind
    CP_BENCH_SOURCE=/tmp/cp-src-main .venv/bin/python loadtest/bench_fanout_cost.py --callgrind
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch import SOURCE
from payloads import STREAMING_MODEL, policy_doc

sys.path.insert(0, str(SOURCE))  # the code measured: this tree, or CP_BENCH_SOURCE


class _Transport:
    """The asyncio transport a ``ControlTransport`` writes to: counts frames."""

    def __init__(self) -> None:
        self.frames = 0

    def write(self, data: bytes) -> None:
        self.frames += 1

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class _Protocol:
    writing_paused = False


class _Request:
    def __init__(self) -> None:
        self.transport = _Transport()
        self.protocol = _Protocol()


class _Socket:
    """The ``WebSocketResponse`` side: open, uncompressed (older trees read ``_writer``)."""

    def __init__(self, request: _Request) -> None:
        from aiohttp.http import WebSocketWriter

        self.closed = False
        self.compress = 0
        self._writer = WebSocketWriter(request.protocol, request.transport)  # type: ignore[arg-type]

    async def send_str(self, data: str) -> None:
        raise AssertionError("frames go to the transport")


def _toggle(on: bool) -> None:
    if os.environ.get("BENCH_CALLGRIND"):
        subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())],
                       capture_output=True, check=False)  # fmt: skip


async def measure(n: int, publishes: int) -> dict[str, Any]:
    from controlplane.app import SERVICE, build_app
    from controlplane.config import Settings
    from controlplane.edges.control_channel import ControlTransport
    from sessions.dialects import dialect_for

    tmp = Path(tempfile.mkdtemp(prefix="cp-fanout-"))
    settings = Settings(data_dir=tmp / "data", node_id="bench", tokens={}, max_connections=n + 1000,
                        shutdown_grace_s=0.1, ack_timeout_s=120.0)  # fmt: skip
    app = build_app(settings)
    app.freeze()
    await app.startup()
    svc = app[SERVICE]
    held = []
    try:
        for i in range(n):
            session, effective = svc.new_session(
                kind="streaming-v3", model=STREAMING_MODEL, labels={"bench": "x"}, client_config={}
            )
            request = _Request()
            ws = _Socket(request)
            try:
                transport = ControlTransport(ws, session.id, request)  # type: ignore[arg-type]
            except TypeError:  # trees before the request argument
                transport = ControlTransport(ws, session.id)  # type: ignore[arg-type]
            ls = await svc.attach(session, effective, transport=transport,
                                  dialect=dialect_for("streaming-v3"), running={},
                                  connect_wire=None)  # fmt: skip
            svc.engine.mark_ready(ls)
            held.append((ls, request))
            if i % 1000 == 999:
                await asyncio.sleep(0)
        await asyncio.sleep(1.0)
        cpu_us = []
        for k in range(1, publishes + 1):
            doc = policy_doc("bench-fanout", k, labels={"bench": "x"}, prompt_chars=165)
            gc.collect()
            _toggle(True)
            cpu = time.thread_time()
            await svc.publish_policy(doc, actor="bench")
            cpu = time.thread_time() - cpu
            _toggle(False)
            cpu_us.append(round(cpu * 1e6 / n, 2))
            await asyncio.sleep(0.2)
            for ls, _ in held:  # every app answers `applied` (not measured)
                await svc.engine.upstream_acked(ls, status="unverified")
            await asyncio.sleep(0.3)
        frames = sum(r.transport.frames for _, r in held)
    finally:
        for ls, _ in held:
            svc.engine.detach(ls.session.id)
        await app.shutdown()
        await app.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    return {"sessions": n, "publishes": publishes, "loop_cpu_us_per_session": cpu_us,
            "frames": frames, "expected_frames": n * publishes}  # fmt: skip


def child(args: argparse.Namespace) -> None:
    from controlplane.cli import serve

    if os.environ.get("BENCH_CALLGRIND"):  # periodic tasks parked: deterministic counts
        import controlplane.push.engine as engine

        engine.REGISTRY_SYNC_INTERVAL_S = engine.SWEEP_INTERVAL_S = 3600.0
    sys.setswitchinterval(serve.GIL_SWITCH_INTERVAL_S)
    gc.set_threshold(*getattr(serve, "GC_THRESHOLDS", gc.get_threshold()))
    import uvloop

    print(json.dumps(uvloop.run(measure(args.sessions, args.publishes))), flush=True)


def callgrind(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="cp-fanout-cg-"))
    env = {**os.environ, "BENCH_CALLGRIND": "1", "PYTHONHASHSEED": "0"}
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
            f"--callgrind-out-file={out}/cg.%p", sys.executable, __file__, "--child",
            "--sessions", str(args.sessions), "--publishes", str(args.publishes)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    row = json.loads([ln for ln in done.stdout.splitlines() if ln.startswith("{")][-1])
    (main,) = out.glob("cg.*-01")  # the first thread: the event loop's
    total = int(re.search(r"^totals: (\d+)", main.read_text(), re.M).group(1))  # type: ignore[union-attr]
    annotated = subprocess.run(["callgrind_annotate", str(main)], capture_output=True,
                               text=True, check=False).stdout  # fmt: skip
    crypto = sum(int(ln.split()[0].replace(",", "")) for ln in annotated.splitlines()
                 if "libcrypto" in ln and ln.strip()[:1].isdigit())  # fmt: skip
    per = args.sessions * args.publishes
    shutil.rmtree(out, ignore_errors=True)
    return {**row, "instructions_per_session": total // per,
            "without_sha256_per_session": (total - crypto) // per}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--publishes", type=int, default=2)
    parser.add_argument("--callgrind", action="store_true", help="instructions (valgrind)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    if args.callgrind:
        row = callgrind(args)
    else:
        done = subprocess.run([sys.executable, __file__, "--child", "--sessions",
                               str(args.sessions), "--publishes", str(args.publishes)],
                              capture_output=True, text=True, check=False)  # fmt: skip
        row = json.loads([ln for ln in done.stdout.splitlines() if ln.startswith("{")][-1])
    source = SOURCE / "COMMIT"
    row["source"] = source.read_text().strip() if source.exists() else str(SOURCE)
    print(json.dumps(row), flush=True)
    return 0 if row["frames"] == row["expected_frames"] else 1


if __name__ == "__main__":
    sys.exit(main())
