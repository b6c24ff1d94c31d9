"""Benchmark: ``controlplane policy apply --wait`` against N live control-channel sessions.

Starts ``controlplane serve`` (embedded mode, a generated token) on 127.0.0.1, opens N
control-channel apps (Voice Agent kind) that acknowledge every push (``--reject K``: K of
them report ``failed``), then runs ``controlplane policy apply -f … --wait --json`` as a
subprocess and reports its exit code, outcome, wall time and progress lines (docs/benchmarks.md).

    .venv/bin/python loadtest/bench_apply_wait.py --sessions 1000
    .venv/bin/python loadtest/bench_apply_wait.py --sessions 1000 --reject 10   # exit 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from controlplane.edges.client import ControlClient

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _app(url: str, token: str, fail: bool) -> tuple[ControlClient, asyncio.Task[None]]:
    client = ControlClient(url, token=token, kind="voice-agent-v1", model="voice-agent",
                           labels={"bench": "wait"})  # fmt: skip
    await client.__aenter__()

    async def answer() -> None:
        with contextlib.suppress(Exception):
            async for push in client.pushes():
                if fail:
                    await client.failed(push.version, "refused by the benchmark app")
                else:
                    await client.applied(push.version)

    return client, asyncio.get_running_loop().create_task(answer())


async def main(args: argparse.Namespace) -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    token, port = secrets.token_urlsafe(24), _free_port()
    data = tempfile.mkdtemp(prefix="bench-apply-wait-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
    env.update(CONTROLPLANE_TOKENS=f"admin:{token}", CONTROLPLANE_DATA_DIR=data)
    serve = subprocess.Popen([str(BIN / "controlplane"), "serve", "--listen",
                              f"127.0.0.1:{port}"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    apps: list[tuple[ControlClient, asyncio.Task[None]]] = []
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            await asyncio.sleep(0.2)
        url = f"ws://127.0.0.1:{port}/v1/control"
        for start in range(0, args.sessions, 100):
            batch = range(start, min(start + 100, args.sessions))
            apps += await asyncio.gather(*(_app(url, token, i < args.reject) for i in batch))
        doc = Path(data) / "policy.json"
        doc.write_text(json.dumps({"id": "bench-wait", "match": {"labels": {"bench": ["wait"]}},
                                   "set": {"system_prompt": f"v{time.time()}"},
                                   "guard": {"enabled": False}}))  # fmt: skip
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "controlplane"), "policy", "apply", "-f", str(doc), "--wait", "--json",
            "--url", f"http://127.0.0.1:{port}", env={**env, "CONTROLPLANE_TOKEN": token},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        wall = time.monotonic() - started
        answer = json.loads(out)
        progress = [ln for ln in err.decode().splitlines() if ln.startswith("policy bench-wait")]
        print(json.dumps({"sessions": args.sessions, "reject": args.reject,
                          "exit_code": proc.returncode, "outcome": answer["outcome"],
                          "waited_s": answer["waited_s"], "wall_s": round(wall, 3),
                          "progress_lines": len(progress), "last_progress": progress[-1:],
                          "counts": answer["progress"]}, indent=2))  # fmt: skip
        expected = 3 if args.reject else 0
        return 0 if proc.returncode == expected else 1
    finally:
        for client, task in apps:
            await client.close()
            task.cancel()
        serve.terminate()
        serve.wait(timeout=60)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--reject", type=int, default=0, help="apps that report failed")
    sys.exit(asyncio.run(main(parser.parse_args())))
