"""Profiling a server under load with py-spy: record collapsed stacks of a process, then
summarize self and inclusive sample shares per function.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from launch import BIN

__all__ = [
    "start_pyspy",
    "stop_pyspy",
    "summarize_collapsed",
]


# -- profiling (py-spy) ------------------------------------------------------------------------
def start_pyspy(pid: int, output: Path, rate: int = 1000) -> subprocess.Popen[bytes] | None:
    """``py-spy record`` of ``pid`` into ``output`` (collapsed stacks); None when unavailable."""
    exe = BIN / "py-spy"
    if not exe.exists():
        exe_found = shutil.which("py-spy")
        if exe_found is None:
            print("py-spy not installed (pip install py-spy): no profile", file=sys.stderr)
            return None
        exe = Path(exe_found)
    output.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [str(exe), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
         "--nonblocking", *os.environ.get("CP_PYSPY_ARGS", "").split(), "--output", str(output)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)  # attached before the measured work starts
    return proc


def stop_pyspy(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def summarize_collapsed(paths: Sequence[Path], top: int = 25) -> str:
    """Self and inclusive sample shares per function of py-spy ``raw`` (collapsed) files."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    lines_in = [ln for p in paths if p.exists() for ln in p.read_text().splitlines()]
    for line in lines_in:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            incl[frame] = incl.get(frame, 0) + n
    if not total:
        return "no samples"

    def short(frame: str) -> str:
        name, _, where = frame.partition(" (")
        where = where.rstrip(")")
        for marker_dir in ("site-packages/", "/work/main/", "lib/python3.11/"):
            if marker_dir in where:
                where = where.split(marker_dir, 1)[1]
        return f"{name} ({where})"

    lines = [f"{total} samples"]
    lines.append("self:")
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / total:5.1f}%  {short(frame)}")
    lines.append("inclusive:")
    for frame, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / total:5.1f}%  {short(frame)}")
    return "\n".join(lines)
