"""Benchmark: the latency of a gateway Voice Agent connect (the client's first
``session.update`` sent to ``session.ready`` received), against another tree of the code.

Each measurement is a fresh process: the emulator and an embedded control plane (file version
log with ``fdatasync``, data dir under ``--data-root``) on 127.0.0.1, 10 warm-up connects,
then ``--sequential`` connects one after another and ``--rounds`` rounds of ``--burst``
connects at once. ``--tree`` names the code (a checkout to put first on ``PYTHONPATH``), given
twice or more: the trees alternate within each run, so each run's ratio compares them on the
same machine load. Reports the medians (and p90) per tree and run and the median over runs of
the ratio of each tree to the first.

    .venv/bin/python loadtest/bench_connect.py --tree ../base --tree . --runs 3

Why: a gateway connect is write-ahead (``controlplane.service.live``): its ``connect`` entry is
made durable (one group commit) before the upstream is dialled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]


async def _serve(app: Any) -> tuple[Any, int]:
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    return runner, int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]


async def _connect(base: str) -> tuple[Any, float]:
    import websockets

    started = time.perf_counter()
    ws = await websockets.connect(
        base + "/v1/ws", additional_headers={"Authorization": "Bearer test-key"}
    )
    await ws.send(json.dumps({"type": "session.update", "session": {}}))
    answer = json.loads(await ws.recv())
    if answer.get("type") != "session.ready":
        raise SystemExit(f"connect failed: {answer}")
    return ws, time.perf_counter() - started


async def _measure(args: argparse.Namespace) -> dict[str, float]:
    from controlplane.app import build_app
    from controlplane.config import Settings
    from emulator.server import build_app as build_emulator
    from emulator.settings import EmulatorSettings

    emulator, eport = await _serve(build_emulator(EmulatorSettings(pacing_tolerance_ms=5000.0)))
    data = Path(tempfile.mkdtemp(dir=args.data_root, prefix="bench-connect-"))
    settings = Settings(
        listen="127.0.0.1:0", node_id="bench", data_dir=data, shutdown_grace_s=0.2,
        upstream_streaming_url=f"ws://127.0.0.1:{eport}/v3/ws",
        upstream_agent_url=f"ws://127.0.0.1:{eport}/v1/ws",
    )  # fmt: skip
    runner, port = await _serve(build_app(settings))
    base = f"ws://127.0.0.1:{port}"
    for _ in range(10):
        ws, _ = await _connect(base)
        await ws.close()
    sequential = []
    for _ in range(args.sequential):
        ws, took = await _connect(base)
        sequential.append(took)
        await ws.close()
    burst: list[float] = []
    for _ in range(args.rounds):
        opened = await asyncio.gather(*(_connect(base) for _ in range(args.burst)))
        burst += [took for _, took in opened]
        await asyncio.gather(*(ws.close() for ws, _ in opened))
    await runner.cleanup()
    await emulator.cleanup()

    def p90(xs: list[float]) -> float:
        return sorted(xs)[int(0.9 * (len(xs) - 1))] * 1000

    return {
        "sequential_median_ms": statistics.median(sequential) * 1000,
        "sequential_p90_ms": p90(sequential),
        "burst_median_ms": statistics.median(burst) * 1000,
        "burst_p90_ms": p90(burst),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", default=[], help="a checkout (repeat)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sequential", type=int, default=100)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-root", default=tempfile.gettempdir())
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(asyncio.run(_measure(args))))
        return 0
    trees = [str(Path(t).resolve()) for t in args.tree] or [str(Path.cwd())]
    forwarded = ["--sequential", str(args.sequential), "--burst", str(args.burst),
                 "--rounds", str(args.rounds), "--data-root", args.data_root]  # fmt: skip
    ratios: dict[str, list[float]] = {}
    for run in range(args.runs):
        results = {}
        for tree in trees:
            env = {**os.environ, "PYTHONPATH": tree}
            done = subprocess.run([sys.executable, __file__, "--one", *forwarded], env=env,
                                  capture_output=True, text=True, check=True)  # fmt: skip
            results[tree] = json.loads(done.stdout.strip().splitlines()[-1])
            print(json.dumps({"run": run, "tree": tree, **results[tree]}), flush=True)
        first = results[trees[0]]
        for tree in trees[1:]:
            for key, value in results[tree].items():
                ratios.setdefault(f"{tree}:{key}", []).append(value / first[key])
    for key, values in ratios.items():
        print(json.dumps({"ratio_to_first": key, "median": statistics.median(values),
                          "runs": [round(v, 3) for v in values]}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
