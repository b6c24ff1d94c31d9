"""Benchmark: a burst of one policy's versions to streaming sessions through the gateway.

Issue #23 target: ten versions in one second to 5,000 Streaming v3 sessions — at most 3
frames per session on average, every session ends on the newest; an isolated publish's p50
unchanged within noise.

One command starts everything on 127.0.0.1 (the emulator, ``controlplane serve`` with a
generated token) and opens ``--sessions`` Streaming v3 sessions through the gateway from
``--client-procs`` client processes. Each run measures two stacks on the same clients, in
alternating order:

* ``coalescing``: the servers' source as checked out (fleet-level coalescing, its default
  debounce: ``--fanout-quiet-s`` etc. are passed as CONTROLPLANE_FANOUT_* when given);
* ``before``: ``--baseline REV`` (a ``git archive`` of that commit: the code before
  coalescing), same everything else.

On each stack: ``--isolated`` single publishes ``--gap`` seconds apart (each one's latency,
publish → the emulator received the ``UpdateConfiguration``, p50 / p99 / max over the
sessions), then the burst: ``--versions`` versions published ``1 / --rate`` seconds apart (each
POST from its own thread, on schedule, not waiting for the previous answer). Once the
emulator has been quiet for ``--settle`` seconds, every session's timeline is read
(``/_emulator/sessions/{id}``): the burst's frames it received and whether its config ends
on the newest version.

    .venv/bin/python loadtest/bench_burst.py --sessions 5000 --runs 3 --baseline <rev>

Reports per run and the median over runs; the isolated p50 as a ratio coalescing / before
within each run (the median of those ratios). Exit status 0 when every session of every
stack ended on the newest version.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clients import ClientPool, ws_url
from launch import ROOT, new_token, start_controlplane, start_emulator, workdir
from loopback import emulator_receipts, http_json, raise_nofile, scrape
from payloads import STREAMING_MODEL, find_marker, marker, policy_doc
from report import add_quiet_arg, finish, median, print_header, summary_ms, wait_quiet

STREAMING_QUERY = f"/v3/ws?sample_rate=16000&speech_model={STREAMING_MODEL}"
API_KEY = "bench-key"
POLICY = "bench-burst"
FANOUT_SETTINGS = ("quiet_s", "max_delay_s", "frames_per_s")
FIRST_MESSAGE_TIMEOUT_S = 60  # (the most serve takes)


# -- stacks ------------------------------------------------------------------------------------
def baseline_tree(rev: str, into: Path) -> Path:
    """``git archive`` of ``rev`` (the code before coalescing) under ``into``."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], check=True,
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    tree = into / f"baseline-{sha}"
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha], check=True,
                             capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    (tree / "COMMIT").write_text(sha + "\n")
    return tree


def open_sessions(pool: ClientPool, cp_ws: str, n: int, label: str, concurrency: int) -> list[str]:
    """``n`` Streaming v3 sessions through the gateway; their upstream (emulator) ids."""
    spec = {
        "url": ws_url(cp_ws, STREAMING_QUERY),
        "expect": "Begin",
        # a first frame, so that the gateway's first-message deadline never closes a session
        # that sends no audio; forwarded upstream (the emulator's timeline shows it)
        "first": json.dumps({"type": "ForceEndpoint"}),
        "headers": {"X-Session-Labels": f"bench={label}", "Authorization": API_KEY},
    }
    counts = pool.split(n)
    args = [{**spec, "count": c, "concurrency": concurrency} for c in counts]
    answers = pool.call("open", args)
    ids = [i for a in answers for i in a["ids"]]
    errors = sum(a["errors"] for a in answers)
    if errors or len(ids) != n:
        samples = [s for a in answers for s in a["error_samples"]][:3]
        raise RuntimeError(f"opened {len(ids)} of {n} sessions ({errors} errors): {samples}")
    return ids


def version_doc(seq: int, label: str, prompt_chars: int) -> dict[str, Any]:
    """Version ``seq`` of the policy, its number explicit (concurrent publishes of a burst
    would otherwise race for the next number: 409)."""
    doc = policy_doc(POLICY, seq, labels={"bench": label}, prompt_chars=prompt_chars)
    return {**doc, "version": seq}


def publish(cp_http: str, token: str, doc: dict[str, Any]) -> float:
    """POST one version; returns the wall time just before the request."""
    at = time.time()
    status, body = http_json(cp_http + "/v1/policies", method="POST", body=doc, token=token)
    if status != 201:
        raise RuntimeError(f"publish of version {doc.get('version')} failed: {status} {body}")
    return at


def emulator_updates(emu_http: str) -> int:
    _, stats = http_json(emu_http + "/_emulator/stats")
    return int(stats["kinds"]["streaming-v3"]["updates"])


def wait_settled(emu_http: str, settle_s: float, timeout: float) -> int:
    """Wait until the emulator's update count has not moved for ``settle_s``."""
    deadline = time.monotonic() + timeout
    last, since = emulator_updates(emu_http), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = emulator_updates(emu_http)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= settle_s:
            break
    return last


def burst_frames(
    emu_http: str, ids: list[str], first_seq: int, last_seq: int
) -> list[tuple[int, bool, float | None]]:
    """Per session: the burst's frames received, whether its config ends on the newest
    version, and when that version arrived (emulator wall time)."""

    def one(upstream_id: str) -> tuple[int, bool, float | None]:
        _, body = http_json(f"{emu_http}/_emulator/sessions/{upstream_id}")
        frames, newest_at = 0, None
        for entry in body.get("timeline", []):
            message = entry.get("message") or {}
            if message.get("type") != "UpdateConfiguration":
                continue
            found = find_marker(str(message.get("prompt", "")))
            if found is None or found[0] != POLICY or not first_seq <= found[1] <= last_seq:
                continue
            frames += 1
            if found[1] == last_seq:
                newest_at = float(entry["at"])
        final = find_marker(str((body.get("config") or {}).get("prompt", "")))
        on_newest = final is not None and final[:2] == (POLICY, last_seq)
        return frames, on_newest, newest_at

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, ids))


def measure_stack(
    args: argparse.Namespace, pool: ClientPool, tmp: Path, stack: str, source: Path | None
) -> dict[str, Any]:
    token, label = new_token(), uuid.uuid4().hex[:12]
    emu = start_emulator(tmp, settings={"max_closed_sessions": 10})
    env = {
        "CONTROLPLANE_MAX_CONNECTIONS": str(max(20_000, 2 * args.sessions + 1_000)),
        # the sessions send no audio, only one ForceEndpoint: a slow open must not miss the
        # gateway's first-message deadline (10 s by default)
        "CONTROLPLANE_FIRST_MESSAGE_TIMEOUT_S": str(FIRST_MESSAGE_TIMEOUT_S),
    }
    if stack == "coalescing":
        for name in FANOUT_SETTINGS:
            value = getattr(args, f"fanout_{name}")
            if value is not None:
                env[f"CONTROLPLANE_FANOUT_{name.upper()}"] = str(value)
    cp = start_controlplane(tmp, token, emulator_port=emu.port, extra_env=env, source=source)
    out: dict[str, Any] = {"stack": stack}
    try:
        ids = open_sessions(pool, cp.ws, args.sessions, label, args.concurrency)
        time.sleep(args.settle)
        seq, expected = 0, 0
        isolated = []
        for _ in range(args.isolated):
            seq += 1
            at = publish(cp.http, token, version_doc(seq, label, args.prompt_chars))
            expected += len(ids)
            times = emulator_receipts(emu.http, ids, marker(POLICY, seq), expected, args.timeout)
            isolated.append({**summary_ms([t - at for t in times]), "received": len(times)})
            time.sleep(args.gap)
        out["isolated"] = isolated
        out["isolated_p50_ms"] = median([r["p50_ms"] for r in isolated])
        out["isolated_max_ms"] = median([r["max_ms"] for r in isolated])

        before = emulator_updates(emu.http)
        metrics0 = scrape(cp.http)
        first = seq + 1
        docs = [version_doc(first + i, label, args.prompt_chars) for i in range(args.versions)]
        starts: list[float] = []
        failed: list[str] = []

        def send(doc: dict[str, Any]) -> None:
            try:
                starts.append(publish(cp.http, token, doc))
            except Exception as exc:  # reported with the run (a burst must not lose versions)
                failed.append(str(exc)[:300])

        threads = []
        t0 = time.time() + 0.05
        for i, doc in enumerate(docs):  # on schedule, each from its own thread
            time.sleep(max(0.0, t0 + i / args.rate - time.time()))
            thread = threading.Thread(target=send, args=(doc,))
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()
        if failed:
            raise RuntimeError(f"{len(failed)} burst publishes failed: {failed[:2]}")
        last = first + args.versions - 1
        total = wait_settled(emu.http, args.settle, args.timeout)
        per = burst_frames(emu.http, ids, first, last)
        metrics1 = scrape(cp.http)
        frames = [f for f, _, _ in per]
        newest = [at for _, ok, at in per if ok and at is not None]
        out.update({
            "burst_versions": args.versions,
            "burst_span_s": round(max(starts) - min(starts), 3),
            "frames_per_session": round(sum(frames) / len(frames), 3),
            "frames_max": max(frames),
            "frames_min": min(frames),
            "frames_total_emulator": total - before,
            "on_newest": sum(ok for _, ok, _ in per),
            "sessions": len(ids),
            "newest_done_ms": round((max(newest) - min(starts)) * 1000, 1) if newest else None,
        })  # fmt: skip
        for key in ("controlplane_coalesced_total", "controlplane_fanouts_coalesced_total"):
            if key in metrics1:
                out[key.removeprefix("controlplane_")] = metrics1[key] - metrics0.get(key, 0.0)
        pool.call("close", {})
    finally:
        cp.stop()
        emu.stop()
    return out


# -- runs --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3, help="fresh stacks per run; medians")
    parser.add_argument(
        "--baseline",
        default=None,
        help="git revision of the code before coalescing (compared in each run)",
    )
    parser.add_argument("--versions", type=int, default=10, help="versions in the burst")
    parser.add_argument("--rate", type=float, default=10.0, help="burst publishes per second")
    parser.add_argument("--isolated", type=int, default=3, help="isolated publishes per stack")
    parser.add_argument("--gap", type=float, default=2.0, help="seconds after each isolated one")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of quiet")
    parser.add_argument("--prompt-chars", type=int, default=165, help="≈300-byte push frame")
    parser.add_argument(
        "--client-procs",
        type=int,
        default=0,
        help="client processes (0: 1 per 2,500 sessions, 1 to 4)",
    )
    parser.add_argument("--concurrency", type=int, default=100, help="handshakes in flight")
    parser.add_argument("--timeout", type=float, default=90.0)
    for name in FANOUT_SETTINGS:
        parser.add_argument(
            f"--fanout-{name.replace('_', '-')}",
            type=float,
            default=None,
            help="coalescing stack: CONTROLPLANE_FANOUT_* (default: serve's)",
        )
    parser.add_argument("--json", type=Path, help="also write the results here")
    add_quiet_arg(parser)
    return parser


def main() -> int:
    args = build_parser().parse_args()
    need = 3 * args.sessions + 1000  # client + gateway (two legs) + emulator, one machine
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, need))
    raise_nofile()
    procs = args.client_procs or min(4, max(1, args.sessions // 2500))
    print_header(f"bench_burst sessions={args.sessions} versions={args.versions} rate={args.rate}"
                 f" baseline={args.baseline} client_procs={procs}", sys.argv)  # fmt: skip
    rows: list[dict[str, Any]] = []
    failures = 0
    with ClientPool(procs) as pool, workdir() as tmp:
        base = baseline_tree(args.baseline, tmp) if args.baseline else None
        for run in range(1, args.runs + 1):
            stacks: list[tuple[str, Path | None]] = [("coalescing", None)]
            if base is not None:
                stacks.append(("before", base))
                if run % 2 == 0:
                    stacks.reverse()
            result: dict[str, Any] = {"run": run}
            for stack, source in stacks:
                result["machine_busy_before_" + stack] = wait_quiet(args.quiet_wait)
                with workdir() as stack_tmp:
                    got = measure_stack(args, pool, stack_tmp, stack, source)
                result[stack] = got
                failures += got["sessions"] - got["on_newest"]
                print(json.dumps({"run": run, **got}), flush=True)
            if base is not None:
                new, old = result["coalescing"], result["before"]
                result["isolated_p50_ratio"] = round(
                    new["isolated_p50_ms"] / old["isolated_p50_ms"], 3
                )
                result["isolated_max_ratio"] = round(
                    new["isolated_max_ms"] / old["isolated_max_ms"], 3
                )
            rows.append(result)
    summary: dict[str, Any] = {"sessions": args.sessions, "runs": len(rows), "failures": failures}
    for stack in ("coalescing", "before"):
        got = [r[stack] for r in rows if stack in r]
        for key in ("frames_per_session", "frames_max", "isolated_p50_ms", "isolated_max_ms",
                    "newest_done_ms", "on_newest"):  # fmt: skip
            values = [float(g[key]) for g in got if g.get(key) is not None]
            if values:
                summary[f"{stack}_{key}"] = round(median(values), 3)
    for key in ("isolated_p50_ratio", "isolated_max_ratio"):
        values = [float(r[key]) for r in rows if key in r]
        if values:
            summary[f"median_{key}"] = round(median(values), 3)
            summary[f"{key}_range"] = [min(values), max(values)]
    return finish(summary, rows, args.json, failures)


if __name__ == "__main__":
    sys.exit(main())
