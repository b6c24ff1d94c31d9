"""Every benchmark script runs end to end at a tiny size and exits 0 (they stay runnable).

Each starts its own servers (``controlplane serve``, the emulator, the baseline servers,
redis-server) as subprocesses on 127.0.0.1 and prints one ``median: {...}`` JSON line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _run(script: str, *args: str, timeout: float = 50) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "loadtest" / script), *args, "--quiet-wait", "0"],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    medians = [ln for ln in done.stdout.splitlines() if ln.startswith("median: ")]
    assert medians, out[-4000:]
    return dict(json.loads(medians[-1].split(": ", 1)[1]))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("variant", ["control", "gateway"])
def test_propagation_bench_small(variant: str) -> None:
    m = _run("bench_propagation.py", "--sessions", "20", "--runs", "1", "--variant", variant,
             "--settle", "0.3", "--gap", "0.1")  # fmt: skip
    assert m["failures"] == 0
    assert 0 < m["real_max_ms"] < 5000 and 0 < m["floor_max_ms"] < 5000
    assert m["ratio_max"] > 0
    # where a publish's CPU goes (docs/benchmarks.md, session 9): serve, its loop thread, the
    # clients, the floor server, and the bound they set on two shared cores
    for key in ("real_cp_cpu_s", "real_cp_loop_cpu_s", "real_clients_cpu_s", "floor_cp_cpu_s",
                "floor_clients_cpu_s", "real_cpu_bound_ms", "floor_cpu_bound_ms"):  # fmt: skip
        assert m[key] >= 0, key


@pytest.mark.timeout(90)
def test_propagation_bench_against_a_baseline_source() -> None:
    """``--baseline-source``: another source tree measured in the same runs, against the
    same floor (here this tree again), its medians apart."""
    m = _run("bench_propagation.py", "--sessions", "20", "--runs", "1", "--settle", "0.3",
             "--gap", "0.1", "--baseline-source", str(ROOT), timeout=80)  # fmt: skip
    assert m["failures"] == 0 and m["samples"] == 1
    base = m["baseline"]
    assert base["source"] == str(ROOT) and base["samples"] == 1
    assert 0 < base["real_max_ms"] < 5000 and base["floor_max_ms"] == m["floor_max_ms"]


@pytest.mark.timeout(60)
def test_reconfigure_bench_small() -> None:
    m = _run("bench_reconfigure.py", "--sessions", "20", "--runs", "1", "--settle", "0.3")
    assert m["push_max_ms"] > 0 and m["reconnect_max_ms"] > 0


@pytest.mark.timeout(60)
def test_memory_bench_small() -> None:
    m = _run("bench_memory.py", "--variant", "control", "--sessions", "50", "--warmup", "10",
             "--runs", "1", "--settle", "0.3")  # fmt: skip
    assert m["variant"] == "control" and m["target_kib"] == 24


@pytest.mark.timeout(60)
def test_audit_bench_small() -> None:
    m = _run("bench_audit.py", "--sessions", "50", "--per-session", "4", "--runs", "1")
    for key in ("memory_entries_per_s", "file_entries_per_s", "redis_entries_per_s",
                "file_baseline_entries_per_s", "redis_baseline_entries_per_s"):  # fmt: skip
        assert m[key] > 0, (key, m)


@pytest.mark.timeout(60)
def test_audio_latency_bench_small() -> None:
    m = _run("bench_audio_latency.py", "--sessions", "4", "--seconds", "3", "--runs", "1",
             "--tone-ms", "500", "--silence-ms", "500")  # fmt: skip
    assert m["direct_turns"] > 0 and m["gateway_turns"] > 0
    # every frame the clients sent reached the emulator (4 sessions x 3 s of 50 ms frames)
    assert m["gateway_frames_sent"] >= 4 * 50 and m["gateway_frames_dropped"] == 0


@pytest.mark.timeout(90)
def test_cluster_bench_small() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "loadtest" / "bench_cluster.py"), "--sessions", "6,12",
         "--publishes", "1", "--idle-s", "1", "--gap", "0.3", "--tail-s", "0.3", "--settle",
         "0.3", "--client-procs", "1", "--quiet-wait", "0"],
        capture_output=True, text=True, timeout=80, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    (line,) = [ln for ln in done.stdout.splitlines() if ln.startswith("summary: ")]
    summary = json.loads(line.split(": ", 1)[1])
    assert summary["sessions"] == [6, 12]
    assert summary["nats_msgs"][1] > 0 and summary["redis_commands"][1] > 0, summary


@pytest.mark.timeout(90)
def test_scale_bench_small() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "loadtest" / "bench_scale.py"), "--sessions-list", "20,40",
         "--runs", "1", "--client-procs", "2", "--settle", "0.3", "--gap", "0.1",
         "--quiet-wait", "0"],
        capture_output=True, text=True, timeout=80, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    medians = [json.loads(ln.split(": ", 1)[1]) for ln in done.stdout.splitlines()
               if ln.startswith("median: ")]  # fmt: skip
    assert [m["sessions"] for m in medians] == [20, 40]
    assert all(m["failures"] == 0 and m["kib_per_session"] > 0 for m in medians)
    growth = [json.loads(ln.split(": ", 1)[1]) for ln in done.stdout.splitlines()
              if ln.startswith("growth: ")]  # fmt: skip
    assert growth[0]["sessions"] == 40 and growth[0]["sessions_x"] == 2.0


@pytest.mark.timeout(90)
def test_scale_inproc_bench_small() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "loadtest" / "bench_scale_inproc.py"), "--sessions",
         "50,100", "--runs", "1", "--idle", "0.2", "--quiet-wait", "0"],
        capture_output=True, text=True, timeout=80, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    medians = [json.loads(ln.split(": ", 1)[1]) for ln in done.stdout.splitlines()
               if ln.startswith("median: ")]  # fmt: skip
    assert [m["sessions"] for m in medians] == [50, 100]
    for m in medians:  # every session got both pushes
        assert m["missing_frames"] == 0 and m["publish1_ms"] > 0 and m["noop_ms"] > 0, m


@pytest.mark.timeout(90)
def test_reconnect_bench_small() -> None:
    m = _run("bench_reconnect.py", "--sessions", "20", "--settle", "0.3", timeout=80)
    assert m["failures"] == 0 and m["sessions"] == 20
    assert m["plain_max_ms"] > 0 and m["storm_max_ms"] > 0 and m["ratio_max"] > 0


@pytest.mark.timeout(60)
def test_burst_bench_small() -> None:
    m = _run("bench_burst.py", "--sessions", "20", "--runs", "1", "--isolated", "1",
             "--gap", "0.3", "--settle", "0.5", "--versions", "5", "--rate", "20")  # fmt: skip
    assert m["failures"] == 0
    assert m["coalescing_on_newest"] == 20
    assert m["coalescing_frames_per_session"] < 5  # five versions, coalesced
    assert 0 < m["coalescing_isolated_p50_ms"] < 5000


@pytest.mark.timeout(90)
def test_fanout_cost_bench_small() -> None:
    """Every session of every publish got its frame through the real ControlTransport."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "loadtest" / "bench_fanout_cost.py"), "--sessions", "50",
         "--publishes", "2"],
        capture_output=True, text=True, timeout=80, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    row = json.loads(done.stdout.splitlines()[-1])
    assert row["frames"] == row["expected_frames"] == 100, row
    assert len(row["loop_cpu_us_per_session"]) == 2 and min(row["loop_cpu_us_per_session"]) > 0
