"""Benchmark: move N live streaming sessions to a new config — push vs reconnect.

Both in the same run, same N sessions through the gateway (``controlplane serve`` + the
emulator as upstream, started here on 127.0.0.1):

* **push** — one ``POST /v1/policies`` (new ``prompt`` and ``max_turn_silence_ms``); the time
  until the emulator has received the ``UpdateConfiguration`` of the last session (its
  timeline ``at``), i.e. the convergence of a mid-session reconfiguration. Also reported:
  the service's own convergence (``controlplane_convergence_seconds``: event → last frame
  written), which leaves out the single emulator process working through N updates.
* **reconnect** — the baseline without mid-session updates: at one instant every client
  closes its socket and reconnects with the new config in the connect query, through the same
  gateway; the time until the last session has its new ``Begin``.

Reports both (p50 / p99 / max) and the speed-up = reconnect max / push max. Target (the
issue): ≥ 20× at 5,000 sessions. ``--concurrency`` bounds handshakes in flight per client
process during the reconnect (a fleet reconnecting at once has no such bound; 500 keeps the
listen backlog from overflowing).

    .venv/bin/python loadtest/bench_reconfigure.py --sessions 5000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clients import ClientPool, ws_url
from launch import new_token, start_controlplane, start_emulator, workdir
from loopback import emulator_receipts, http_json, raise_nofile, scrape
from payloads import STREAMING_MODEL, marker, policy_doc
from report import add_quiet_arg, finish, median_of, print_header, summary_ms, wait_quiet

HEADERS = {"Authorization": "bench-key", "X-Session-Labels": "tenant=acme"}


def one_run(args: argparse.Namespace, pool: ClientPool, run: int) -> dict[str, Any]:
    with workdir() as tmp:
        emu = start_emulator(tmp, settings={"max_closed_sessions": args.sessions + 100})
        token = new_token()
        cp = start_controlplane(tmp, token, emulator_port=emu.port, lift_upstream_limit=True)
        try:
            base = f"/v3/ws?sample_rate=16000&speech_model={STREAMING_MODEL}"
            counts = pool.split(args.sessions)
            answers = pool.call(
                "open",
                [
                    {
                        "url": ws_url(cp.ws, base),
                        "expect": "Begin",
                        "headers": HEADERS,
                        "count": c,
                        "concurrency": 100,
                    }
                    for c in counts
                ],
            )
            ids = [i for a in answers for i in a["ids"]]
            errors = sum(a["errors"] for a in answers)
            if errors:
                raise RuntimeError(f"{errors} sessions failed to open")
            time.sleep(args.settle)

            # push: one publish, the upstream of every session receives UpdateConfiguration
            doc = policy_doc(
                "bench-reconfigure", 1, labels={"tenant": "acme"}, prompt_chars=args.prompt_chars
            )
            doc["set"]["max_turn_silence_ms"] = 2400
            before = scrape(cp.http)
            published = time.time()
            status, body = http_json(cp.http + "/v1/policies", method="POST", body=doc, token=token)
            post_ms = (time.time() - published) * 1000
            if status != 201:
                raise RuntimeError(f"publish failed: {status} {body}")
            got = emulator_receipts(
                emu.http,
                ids,
                marker("bench-reconfigure", 1),
                expected=len(ids),
                timeout=args.timeout,
            )
            push = [t - published for t in got]
            key = "controlplane_convergence_seconds_sum"
            written_ms = (scrape(cp.http).get(key, 0.0) - before.get(key, 0.0)) * 1000
            time.sleep(args.settle)

            # reconnect: every session closes and reopens with the new config at connect
            query = urllib.parse.urlencode(
                {"prompt": doc["set"]["prompt"] + " (reconnected)", "max_turn_silence": 2400}
            )
            at = time.time() + 0.5
            answers = pool.call(
                "reconnect",
                {
                    "at": at,
                    "url": ws_url(cp.ws, f"{base}&{query}"),
                    "expect": "Begin",
                    "headers": HEADERS,
                    "concurrency": args.concurrency,
                    "timeout": args.timeout,
                },
            )
            reconnect = [t - at for a in answers for t in a["times"]]
            re_errors = sum(a["errors"] for a in answers)
            pool.call("close", {})
        finally:
            cp.stop()
            emu.stop()
    p, r = summary_ms(push), summary_ms(reconnect)
    row = {
        "run": run,
        "sessions": len(ids),
        "push_received": len(push),
        "reconnected": len(reconnect),
        "reconnect_errors": re_errors,
        **{f"push_{k}": v for k, v in p.items()},
        **{f"reconnect_{k}": v for k, v in r.items()},
    }
    row["push_post_ms"] = round(post_ms, 1)
    row["push_written_ms"] = round(written_ms, 1)  # server: event → last frame written
    row["speedup_written"] = round(r["max_ms"] / written_ms, 1) if written_ms else None
    row["speedup_max"] = round(r["max_ms"] / p["max_ms"], 1) if p["max_ms"] else None
    row["speedup_p50"] = round(r["p50_ms"] / p["p50_ms"], 1) if p["p50_ms"] else None
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=500,
        help="reconnect handshakes in flight per client process",
    )
    parser.add_argument("--client-procs", type=int, default=0, help="0: 1 per 2,500 sessions")
    parser.add_argument("--prompt-chars", type=int, default=165)
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--json", type=Path)
    add_quiet_arg(parser)
    args = parser.parse_args()
    raise_nofile()
    procs = args.client_procs or min(4, max(1, args.sessions // 2500))
    print_header(f"bench_reconfigure sessions={args.sessions} client_procs={procs}", sys.argv)
    runs = []
    with ClientPool(procs) as pool:
        for run in range(1, args.runs + 1):
            busy = wait_quiet(args.quiet_wait)
            row = one_run(args, pool, run)
            row["machine_busy_before"] = busy
            runs.append(row)
            print(json.dumps(row), flush=True)
    keys = [
        "push_p50_ms",
        "push_p99_ms",
        "push_max_ms",
        "reconnect_p50_ms",
        "reconnect_p99_ms",
        "reconnect_max_ms",
        "speedup_max",
        "speedup_p50",
        "push_post_ms",
        "push_written_ms",
        "speedup_written",
    ]
    summary = {"sessions": args.sessions, **median_of(runs, keys)}
    summary["meets_target_20x"] = summary["speedup_max"] >= 20
    failures = sum(
        not (r["push_received"] == r["sessions"] == args.sessions and r["reconnect_errors"] == 0)
        for r in runs
    )
    return finish(summary, runs, args.json, failures)


if __name__ == "__main__":
    sys.exit(main())
