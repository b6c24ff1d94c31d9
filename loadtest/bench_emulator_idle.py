"""Benchmark: N idle streaming v3 sessions held open against the emulator.

Starts the emulator in a subprocess (``python -m emulator``), opens N sessions with raw
``websockets`` clients (raw-key auth, no permessage-deflate), waits for every ``Begin``, holds
them idle for a few seconds, then checks that every one got ``Begin`` and none was closed, and
reports the open time, the emulator's RSS and CPU time, and errors.

    .venv/bin/python loadtest/bench_emulator_idle.py --sessions 2000 --runs 3

Exit status 0 only when every run had zero errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
    return soft


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"emulator exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"emulator not listening on {port}")


def process_usage(pid: int) -> tuple[float, float]:
    """(RSS in MiB, CPU seconds user+system) of ``pid``."""
    try:
        import psutil  # type: ignore[import-untyped]

        proc = psutil.Process(pid)
        cpu = proc.cpu_times()
        return proc.memory_info().rss / 2**20, cpu.user + cpu.system
    except ImportError:
        rss_kib = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss_kib = int(line.split()[1])
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return rss_kib / 1024, (int(fields[11]) + int(fields[12])) / ticks


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


async def open_session(
    url: str, key: str, gate: asyncio.Semaphore, errors: list[str]
) -> ClientConnection | None:
    async with gate:
        try:
            ws = await connect(
                url,
                additional_headers={"Authorization": key},
                compression=None,
                ping_interval=None,
                open_timeout=30,
                close_timeout=5,
            )
            first = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if first.get("type") != "Begin":
                errors.append(f"first message {first.get('type')}")
                await ws.close()
                return None
            return ws
        except Exception as exc:  # every failure is counted, not raised
            errors.append(f"{type(exc).__name__}: {exc}")
            return None


async def one_run(args: argparse.Namespace) -> dict[str, Any]:
    port = args.port or free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "emulator", "--listen", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        await asyncio.sleep(0.3)
        rss_before, cpu_before = process_usage(proc.pid)
        url = f"ws://127.0.0.1:{port}/v3/ws?sample_rate=16000"
        errors: list[str] = []
        gate = asyncio.Semaphore(args.concurrency)
        start = time.perf_counter()
        opened = await asyncio.gather(
            *(open_session(url, args.key, gate, errors) for _ in range(args.sessions))
        )
        open_s = time.perf_counter() - start
        sockets = [ws for ws in opened if ws is not None]
        await asyncio.sleep(args.hold)
        closed_early = sum(1 for ws in sockets if ws.close_code is not None)
        rss_after, cpu_after = process_usage(proc.pid)
        stats = http_json(f"http://127.0.0.1:{port}/_emulator/stats")
        current = stats["kinds"]["streaming-v3"]["sessions_current"]
        close_start = time.perf_counter()
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        close_s = time.perf_counter() - close_start
        return {
            "sessions": args.sessions,
            "began": len(sockets),
            "closed_early": closed_early,
            "emulator_sessions_current": current,
            "errors": len(errors) + closed_early + (current != len(sockets)),
            "error_samples": errors[:5],
            "open_s": round(open_s, 3),
            "close_s": round(close_s, 3),
            "rss_idle_mib": round(rss_before, 1),
            "rss_mib": round(rss_after, 1),
            "rss_per_session_kib": round((rss_after - rss_before) * 1024 / max(1, len(sockets)), 1),
            "emulator_cpu_s": round(cpu_after - cpu_before, 2),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


async def main_async(args: argparse.Namespace) -> int:
    runs = []
    for i in range(args.runs):
        result = await one_run(args)
        runs.append(result)
        print(f"run {i + 1}: {json.dumps(result)}", flush=True)
    summary = {
        key: statistics.median(r[key] for r in runs)
        for key in ("open_s", "rss_mib", "rss_per_session_kib", "emulator_cpu_s", "errors")
    }
    print(f"median of {len(runs)} runs: {json.dumps(summary)}", flush=True)
    return 0 if all(r["errors"] == 0 for r in runs) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--hold", type=float, default=5.0, help="idle seconds before checking")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=200, help="handshakes in flight")
    parser.add_argument("--port", type=int, default=0, help="0: pick a free port")
    parser.add_argument("--key", default="bench-key", help="raw API key sent in Authorization")
    args = parser.parse_args()
    limit = raise_nofile()
    if limit < args.sessions + 100:
        print(f"warning: open-files limit {limit} < sessions + 100", file=sys.stderr)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
