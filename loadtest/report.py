"""A benchmark run's record (stdlib only): waiting for a quiet machine, statistics over runs
(percentiles, medians), the machine description and the header every benchmark prints.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launch import SOURCE, source_revision

__all__ = [
    "Machine",
    "add_quiet_arg",
    "cpu_busy",
    "finish",
    "machine",
    "median",
    "median_of",
    "percentile",
    "print_header",
    "summary_ms",
    "today",
    "wait_quiet",
]


# -- a quiet machine ---------------------------------------------------------------------------
def cpu_busy(sample_s: float = 1.0) -> float:
    """Share of all CPUs busy (any process) over ``sample_s`` seconds, from /proc/stat."""

    def snap() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields[:8]), idle

    total0, idle0 = snap()
    time.sleep(sample_s)
    total1, idle1 = snap()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def add_quiet_arg(parser: Any) -> None:
    parser.add_argument(
        "--quiet-wait", type=float, default=30.0,
        help="before each run, wait up to this many seconds for other load to drop below 15%%",
    )  # fmt: skip


def wait_quiet(max_wait_s: float = 120.0, threshold: float = 0.15) -> float:
    """Wait (bounded) until other work on the machine is below ``threshold`` of all CPUs, so a
    shared machine does not skew a run; returns the last busy share (recorded with the run)."""
    deadline = time.monotonic() + max_wait_s
    busy = cpu_busy()
    while busy > threshold and time.monotonic() < deadline:
        print(f"# machine busy ({busy:.0%} of all CPUs): waiting for it to quiet down", flush=True)
        time.sleep(4.0)
        busy = cpu_busy()
    return round(busy, 3)


# -- statistics ------------------------------------------------------------------------------
def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def summary_ms(values_s: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / max in milliseconds of a list of seconds."""
    return {
        "p50_ms": round(percentile(values_s, 50) * 1000, 2),
        "p99_ms": round(percentile(values_s, 99) * 1000, 2),
        "max_ms": round(max(values_s) * 1000, 2) if values_s else math.nan,
    }


def median(values: Sequence[float]) -> float:
    clean = sorted(v for v in values if not (isinstance(v, float) and math.isnan(v)))
    if not clean:
        return math.nan
    mid = len(clean) // 2
    return clean[mid] if len(clean) % 2 else (clean[mid - 1] + clean[mid]) / 2


def median_of(runs: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, float]:
    return {k: round(median([float(r[k]) for r in runs if k in r]), 3) for k in keys}


# -- reporting -------------------------------------------------------------------------------
@dataclass
class Machine:
    cpu: str
    cores: int
    memory_gib: float
    kernel: str
    python: str
    extra: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        return (
            f"{self.cores} cores {self.cpu}, {self.memory_gib:.0f} GiB RAM, Linux "
            f"{self.kernel}, Python {self.python}"
        )


def machine() -> Machine:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0.0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) / 2**20
    return Machine(cpu, os.cpu_count() or 0, mem, platform.release(), platform.python_version())


def today() -> str:
    return time.strftime("%Y-%m-%d")


def print_header(title: str, argv: Sequence[str]) -> None:
    m = machine()
    print(f"# {title}", flush=True)
    print(f"# {today()}  {m.describe()}", flush=True)
    print(f"# command: {' '.join(argv)}", flush=True)
    print(f"# servers run source {SOURCE} at {source_revision()}", flush=True)


def finish(
    summary: Mapping[str, Any], runs: Sequence[Any], json_path: Path | None, failures: int
) -> int:
    """The end of every benchmark: print the median line, write ``--json`` (runs and median)
    when asked, and the exit status — 1 when any run failed its checks."""
    print(f"median: {json.dumps(summary)}", flush=True)
    if json_path:
        json_path.write_text(json.dumps({"runs": list(runs), "median": summary}, indent=2))
    return 0 if failures == 0 else 1
