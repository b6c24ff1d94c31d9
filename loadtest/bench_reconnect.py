"""Benchmark: a reconnect storm onto a fresh replica after a SIGKILL, against plain connects.

One command starts, on 127.0.0.1, ``nats-server -js``, ``redis-server`` and three
``controlplane serve`` replicas in full distributed mode (``r1`` the victim, ``r2`` the storm's
target, ``r3`` the plain connects' target; ``r2`` and ``r3`` hold no session before their
phase), publishes one policy matching every session, then, with the same client processes:

1. **plain connects**: ``--sessions`` control-channel sessions connect to ``r3`` at once
   (``--concurrency`` handshakes in flight per client process); each is timed from the start
   of the burst to its first ``push`` carrying the current version (its app has the current
   config; it answers ``applied``). Then they close.
2. **storm**: as many sessions connect to ``r1`` and get the current config; ``r1`` is
   SIGKILLed; every client reconnects to ``r2`` as soon as its socket closes (same
   concurrency), registers again (a new session: the old id stays claimed by the dead node),
   and is timed from the kill to its first ``push`` carrying the current version.

Reports p50 / p99 / max of both and the ratio storm / plain (max = "every session on the
current config"), per run and the median of ``--runs`` fresh runs.

    .venv/bin/python loadtest/bench_reconnect.py --sessions 10000 --runs 3

Exit status 0 when every session of every run got the current config in both phases.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cluster import POLICY_ID, nats_with_monitoring, redis, start_replica
from clients import ClientPool, ws_url
from launch import Proc, new_token, process_usage, workdir
from loopback import http_json, raise_nofile
from payloads import STREAMING_MODEL, marker, policy_doc
from report import add_quiet_arg, finish, median, median_of, print_header, summary_ms, wait_quiet


def _progress(what: str) -> None:
    print(f"# {time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)


def _spec(
    replica: Proc, token: str, label: str, mark: str, concurrency: int, timeout: float
) -> dict[str, Any]:
    register = json.dumps({"type": "register", "kind": "streaming-v3", "model": STREAMING_MODEL,
                           "labels": {"bench": label}, "config": {}})  # fmt: skip
    return {"url": ws_url(replica.ws, "/v1/control"), "first": register, "expect": "registered",
            "headers": {"Authorization": f"Bearer {token}"}, "marker": mark,
            "concurrency": concurrency, "timeout": timeout}  # fmt: skip


def _gather(answers: list[dict[str, Any]], since: float) -> dict[str, Any]:
    times = [t - since for a in answers for t in a["times"]]
    return {
        "first_ms": round(min(times) * 1000, 2) if times else None,
        **summary_ms(times),
        "current": len(times),
        "missing": sum(a["missing"] for a in answers),
        "closed_early": sum(a["closed"] for a in answers),
        "missing_frames_seen": sorted({n for a in answers for n in a["missing_seen"]}),
        "errors": sum(a["errors"] for a in answers),
        "error_samples": [s for a in answers for s in a["error_samples"]][:3],
    }


def _wait_version(replicas: list[Proc], token: str, version: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    for replica in replicas:
        while True:
            status, body = http_json(f"{replica.http}/v1/policies/{POLICY_ID}", token=token)
            if status == 200 and int(body.get("version", 0)) >= version:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{replica.name} did not apply version {version}: {body}")
            time.sleep(0.05)


def one_run(args: argparse.Namespace, pool: ClientPool, tmp: Path, run: int) -> dict[str, Any]:
    token, label = new_token(), uuid.uuid4().hex[:12]
    out: dict[str, Any] = {"run": run, "sessions": args.sessions}
    with ExitStack() as stack:
        nats_srv, _ = stack.enter_context(nats_with_monitoring(tmp))
        redis_srv = stack.enter_context(redis(tmp))
        replicas = []
        for node in ("r1", "r2", "r3"):
            proc = start_replica(tmp, node, token, nats_srv.url, redis_srv.url)
            stack.callback(proc.stop)
            replicas.append(proc)
        victim, target, plain = replicas
        doc = policy_doc(POLICY_ID, 1, labels={"bench": label}, prompt_chars=165)
        status, body = http_json(plain.http + "/v1/policies", method="POST", body=doc, token=token)
        if status != 201:
            raise RuntimeError(f"publish failed: {status} {body}")
        _wait_version(replicas, token, 1)
        mark = marker(POLICY_ID, 1)
        counts = pool.split(args.sessions)

        def per_worker(replica: Proc, **extra: Any) -> list[dict[str, Any]]:
            spec = _spec(replica, token, label, mark, args.concurrency, args.timeout)
            return [{**spec, "count": c, "base": sum(counts[:i]), **extra}
                    for i, c in enumerate(counts)]  # fmt: skip

        # 1. plain connects onto r3
        _progress("plain connects")
        cpu0 = process_usage(plain.pid)[1]
        started = time.time()
        out["plain"] = _gather(pool.call("storm", per_worker(plain)), started)
        out["plain"]["replica_cpu_s"] = round(process_usage(plain.pid)[1] - cpu0, 2)
        pool.call("close", {})
        time.sleep(args.settle)

        # 2. the same number onto r1, current config, then SIGKILL r1: they storm r2
        _progress("sessions onto the victim")
        primed = _gather(pool.call("storm", per_worker(victim)), time.time())
        if primed["current"] != args.sessions:
            raise RuntimeError(f"sessions on {victim.name} not all current: {primed}")
        time.sleep(args.settle)
        killed_at: list[float] = []

        cpu_at_kill: list[float] = []

        def kill() -> None:
            cpu_at_kill.append(process_usage(target.pid)[1])
            killed_at.append(time.time())
            victim.popen.send_signal(signal.SIGKILL)

        _progress("kill and storm")
        timer = threading.Timer(1.0, kill)
        timer.start()
        answers = pool.call("storm", per_worker(target, after_close=True))
        timer.join()
        victim.popen.wait(timeout=10)
        out["storm"] = _gather(answers, killed_at[0])
        out["storm"]["replica_cpu_s"] = round(process_usage(target.pid)[1] - cpu_at_kill[0], 2)
        pool.call("close", {})
    for key in ("p50", "p99", "max"):
        plain_ms, storm_ms = out["plain"][f"{key}_ms"], out["storm"][f"{key}_ms"]
        out[f"ratio_{key}"] = round(storm_ms / plain_ms, 2) if plain_ms else None
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=1, help="fresh cluster per run")
    parser.add_argument(
        "--client-procs", type=int, default=0, help="client processes (0: 1 per 2,500, 1-4)"
    )
    parser.add_argument("--concurrency", type=int, default=200, help="handshakes in flight/proc")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between phases")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="per phase: connect, then current config"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the servers' logs and data")
    add_quiet_arg(parser)
    args = parser.parse_args()
    limit = raise_nofile()
    if limit < args.sessions + 500:
        print(f"warning: open-files limit {limit} < {args.sessions + 500}", file=sys.stderr)
    procs = args.client_procs or min(4, max(1, args.sessions // 2500))
    print_header(f"bench_reconnect sessions={args.sessions} client_procs={procs}", sys.argv)
    runs = []
    failures = 0
    with ClientPool(procs) as pool:
        for run in range(1, args.runs + 1):
            busy = wait_quiet(args.quiet_wait)
            with workdir(keep=args.keep) as tmp:
                row = one_run(args, pool, tmp, run)
            row["machine_busy_before"] = busy
            for phase in ("plain", "storm"):
                failures += row[phase]["current"] != args.sessions
            runs.append(row)
            print(json.dumps(row), flush=True)
    flat = [
        {**{f"{p}_{k}": v for p in ("plain", "storm") for k, v in r[p].items()},
         **{k: v for k, v in r.items() if k.startswith("ratio_")}}
        for r in runs
    ]  # fmt: skip
    keys = ["plain_p50_ms", "plain_p99_ms", "plain_max_ms", "storm_p50_ms", "storm_p99_ms",
            "storm_max_ms", "ratio_p50", "ratio_p99", "ratio_max", "plain_replica_cpu_s",
            "storm_replica_cpu_s"]  # fmt: skip
    summary = {"sessions": args.sessions, "runs": len(runs), "client_procs": procs,
               **median_of(flat, keys), "failures": failures}  # fmt: skip
    summary["ratio_of_medians_max"] = round(
        median([r["storm_max_ms"] for r in flat]) / median([r["plain_max_ms"] for r in flat]), 2
    )
    return finish(summary, runs, args.json, failures)


if __name__ == "__main__":
    sys.exit(main())
