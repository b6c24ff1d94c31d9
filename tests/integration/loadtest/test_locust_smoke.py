"""The locust load test runs headless against a real control plane and emulator.

Both servers run in the test's event loop on free ports; locust runs as a subprocess (gevent
monkey-patches the whole interpreter, so it cannot share the test's process). A handful of
users of every class for a few seconds: the run must make requests, measure propagation and
convergence, report no failures and exit 0 (the SLO check passes).
"""

from __future__ import annotations

import asyncio
import csv
import importlib.util
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession, web

from controlplane.app import build_app
from controlplane.config import Settings
from emulator.server import build_app as build_emulator
from emulator.settings import EmulatorSettings

# never import locust here: it monkey-patches the interpreter (gevent) on import.
# `make install` installs the load extra; without it this suite fails loudly, never skips.
assert importlib.util.find_spec("locust") is not None, "pip install -e '.[dev,load]'"

ROOT = Path(__file__).resolve().parents[3]
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
LOCUST = Path(sys.executable).parent / "locust"
TOKEN = "smoke-admin-token"


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None and server.sockets  # type: ignore[union-attr]
    return runner, int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[int, int]]:
    emu_runner, emu_port = await _serve(build_emulator(EmulatorSettings()))
    settings = Settings(
        listen="127.0.0.1:0",
        upstream_streaming_url=f"ws://127.0.0.1:{emu_port}/v3/ws",
        upstream_agent_url=f"ws://127.0.0.1:{emu_port}/v1/ws",
        data_dir=tmp_path / "data",
        node_id="smoke",
        tokens={TOKEN: "admin"},
        shutdown_grace_s=0.5,
    )
    cp_runner, cp_port = await _serve(build_app(settings))
    try:
        yield cp_port, emu_port
    finally:
        await cp_runner.cleanup()
        await emu_runner.cleanup()


@pytest.mark.timeout(45)
async def test_locust_headless_run_measures_propagation_and_exits_0(
    stack: tuple[int, int], tmp_path: Path
) -> None:
    cp_port, emu_port = stack
    env = {k: v for k, v in os.environ.items() if not k.startswith("LT_")}
    env.update(
        LT_TOKEN=TOKEN,
        LT_EMULATOR_URL=f"http://127.0.0.1:{emu_port}",
        LT_SCENARIO="steady",
        LT_PUBLISH_RATE="2",
        LT_WEIGHTS="streaming=1,agent=1,control=2",
        LT_SLO_MIN_PROPAGATIONS="3",
        LT_SLO_FAIL_RATIO="0",
    )
    proc = await asyncio.create_subprocess_exec(
        str(LOCUST), "-f", str(LOCUSTFILE), "--headless", "-u", "5", "-r", "5", "-t", "5s",
        "--host", f"http://127.0.0.1:{cp_port}", "--only-summary", "--stop-timeout", "5",
        "--csv", str(tmp_path / "out" / "run"), "--html", str(tmp_path / "out" / "run.html"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 35)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-4000:]
    assert "all SLOs hold" in text

    line = next(ln for ln in text.splitlines() if "loadtest summary: " in ln)
    rows = json.loads(line.split("loadtest summary: ", 1)[1])
    for name in ("connect streaming", "connect agent", "connect control", "propagation control",
                 "propagation streaming", "propagation agent", "convergence control",
                 "convergence rollout"):  # fmt: skip
        assert rows.get(name, {}).get("n", 0) > 0, (name, rows)
        assert rows[name]["fail"] == 0, (name, rows)
    total = re.search(r"^\s+Aggregated\s+(\d+)\s+(\d+)\(", text, re.MULTILINE)
    assert total is not None and int(total.group(1)) > 0 and int(total.group(2)) == 0, text[-3000:]

    # archivable outputs: the verdict next to the CSVs, every propagation row in the CSV
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text(encoding="utf-8"))
    assert summary["verdict"] == "pass" and summary["breaches"] == [], summary
    assert summary["rows"]["propagation control"]["n"] > 0
    with (tmp_path / "out" / "run_stats.csv").open(encoding="utf-8") as f:
        names = {row["Name"] for row in csv.DictReader(f)}
    assert {"propagation control", "propagation streaming", "propagation agent"} <= names
    assert "SLO PASS" in (tmp_path / "out" / "run.html").read_text(encoding="utf-8")
    # the run's policy is retired at the end (LT_KEEP_POLICY unset)
    assert summary["policy"] == {"id": "loadtest", "at_end": "retired"}
    async with ClientSession() as http:
        async with http.get(
            f"http://127.0.0.1:{cp_port}/v1/policies/loadtest",
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as resp:
            body = await resp.json()
    assert resp.status == 200 and body["status"] == "retired", body


@pytest.mark.timeout(30)
async def test_locust_preflight_refuses_a_wrong_token_fast(
    stack: tuple[int, int], tmp_path: Path
) -> None:
    cp_port, _ = stack
    env = {k: v for k, v in os.environ.items() if not k.startswith("LT_")}
    env.update(LT_TOKEN="not-the-token", LT_SCENARIO="steady")
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        str(LOCUST), "-f", str(LOCUSTFILE), "--headless", "-u", "1", "-r", "1", "-t", "20s",
        "--host", f"http://127.0.0.1:{cp_port}", "--csv", str(tmp_path / "run"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 25)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = out.decode(errors="replace")
    assert proc.returncode == 2, text[-3000:]
    assert "preflight failed: LT_TOKEN refused" in text, text[-3000:]
    assert time.monotonic() - started < 15  # not after the 20 s run
    assert not (tmp_path / "run_summary.json").exists()
