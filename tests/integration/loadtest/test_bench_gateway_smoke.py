"""``loadtest/bench_gateway.py`` runs end to end at a tiny size and reports both figures.

The benchmark (gateway push vs a bare relay pushing the same frame, docs/benchmarks.md) is
not timed here: this checks that it stays runnable and that each run yields the gateway's
receipts, the relay floor's receipts from the same emulator, and their ratio.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.timeout(60)
def test_gateway_bench_small() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "loadtest" / "bench_gateway.py"), "--sessions", "10",
         "--runs", "1", "--settle", "0.2", "--gap", "0.1", "--quiet-wait", "0"],
        capture_output=True, text=True, timeout=50, cwd=ROOT, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    rows = [json.loads(ln) for ln in done.stdout.splitlines() if ln.startswith("{")]
    medians = [ln for ln in done.stdout.splitlines() if ln.startswith("median: ")]
    assert len(rows) == 1 and medians, out[-4000:]
    for row in rows:
        # every session got the push through the gateway and the same frame from the relay
        assert row["gateway_received"] == row["relay_received"] == 10, row
        assert row["gateway_frame_matches"] is True and row["gateway_frame_bytes"] == 300, row
        assert 0 < row["gateway_max_ms"] < 5000 and 0 < row["relay_max_ms"] < 5000, row
        assert row["ratio_max"] == round(row["gateway_max_ms"] / row["relay_max_ms"], 2), row
    summary = json.loads(medians[0].split(": ", 1)[1])
    assert summary["failures"] == 0 and summary["ratios_max"] == [rows[0]["ratio_max"]], summary
