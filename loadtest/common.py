"""Shared helpers of the load test and the benchmarks (stdlib only, safe under gevent).

Process management (``controlplane serve``, the emulator and the baseline servers as
subprocesses on 127.0.0.1 with a raised open-files limit), statistics, PCM frames, policy
documents with a per-version marker, ``/metrics`` parsing and a machine description.
Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOADTEST = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"

STREAMING_MODEL = "universal-3-5-pro"  # U3-Pro family: takes `prompt` mid-stream
AGENT_MODEL = "voice-agent"
STREAMING_RATE = 16_000
AGENT_RATE = 24_000
FRAME_MS = 50


# -- limits, ports ---------------------------------------------------------------------------
def raise_nofile() -> int:
    """Raise the soft open-files limit to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
    return soft


def _child_setup() -> None:  # preexec_fn of every subprocess we start
    raise_nofile()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_port(
    port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {LOOPBACK}:{port} after {timeout}s")


def http_json(
    url: str,
    *,
    method: str = "GET",
    body: Any = None,
    token: str | None = None,
    timeout: float = 30.0,
) -> tuple[int, Any]:
    """A small loopback-only JSON client: (status, parsed body or text)."""
    if not url.startswith(f"http://{LOOPBACK}:"):
        raise ValueError(f"refusing to call {url}: benchmarks only talk to {LOOPBACK}")
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


# -- processes -------------------------------------------------------------------------------
@dataclass
class Proc:
    """A subprocess we started (stopped by ``stop()``, never by name)."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def http(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://{LOOPBACK}:{self.port}"

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        return self.popen.returncode

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _spawn(
    name: str, argv: Sequence[str], port: int, workdir: Path, env: Mapping[str, str]
) -> Proc:
    log_path = workdir / f"{name}.log"
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            list(argv),
            cwd=SOURCE,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_child_setup,  # noqa: PLW1509 (only sets an rlimit)
        )
    proc = Proc(name, popen, port, log_path)
    try:
        wait_port(port, popen)  # type: ignore[arg-type]
    except Exception:
        proc.stop(timeout=5)
        raise RuntimeError(f"{name} did not start:\n{proc.log_tail()}") from None
    return proc


# ``CP_BENCH_SOURCE=DIR`` runs the servers from another source tree (e.g. a ``git archive`` of
# a commit, so figures belong to that commit rather than to a working tree in flux).
SOURCE = Path(os.environ.get("CP_BENCH_SOURCE") or ROOT).resolve()


def source_revision() -> str:
    """The commit the servers run (``git describe``-like), ``+dirty`` for a modified tree."""
    marker_file = SOURCE / "COMMIT"
    if marker_file.exists():
        return marker_file.read_text().strip()

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(SOURCE), *args], check=True,
                              capture_output=True, text=True, timeout=10)  # fmt: skip
        return done.stdout.strip()

    try:
        sha = git("rev-parse", "--short", "HEAD")
        dirty = git(
            "status", "--porcelain", "--", "controlplane", "sessions", "policies", "emulator"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTROLPLANE_", "EMULATOR_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE), env.get("PYTHONPATH")]))
    return env


def start_emulator(workdir: Path, *, settings: Mapping[str, Any] | None = None) -> Proc:
    port = free_port()
    argv = [sys.executable, "-m", "emulator", "--listen", f"{LOOPBACK}:{port}"]
    for key, value in (settings or {}).items():
        argv += ["--set", f"{key}={value}"]
    return _spawn("emulator", argv, port, workdir, _base_env())


# aiohttp's default connector allows 100 connections per ClientSession, and a WebSocket holds
# its slot for its whole life: the gateway (controlplane/app.py, ``aiohttp.ClientSession()``
# with the default connector) cannot hold more than 100 upstream sockets; the 101st waits and
# fails after the 10 s connect timeout (HTTP 502). app.py passes ``aiohttp.TCPConnector(limit=0)``
# since that finding; gateway benchmarks still start serve through this launcher so that older
# commits can be measured too (it only changes the default: the service's explicit ``limit=``
# wins).
LIFT_UPSTREAM_LIMIT = (
    "import aiohttp\n"
    "_init = aiohttp.TCPConnector.__init__\n"
    "def _unlimited(self, *a, limit=0, **kw):\n"
    "    _init(self, *a, limit=limit, **kw)\n"
    "aiohttp.TCPConnector.__init__ = _unlimited\n"
)
RUN_CLI = "import sys\nfrom controlplane.cli.main import main\nsys.exit(main(sys.argv[1:]))\n"
# Experiments on the garbage collector (DESIGN §6), for ``--gc`` of the benchmarks:
GC_PRELUDES = {
    "default": "",
    "off": "import gc\ngc.disable()\n",
    # SIGUSR1 = "warm-up is over": collect once, then move every object to the permanent
    # generation (what a gc.freeze() after start-up and warm-up in serve would do)
    "freeze": "import gc, signal\n"
    "signal.signal(signal.SIGUSR1, lambda *_: (gc.collect(), gc.freeze()))\n",
}


def start_controlplane(
    workdir: Path,
    token: str,
    *,
    emulator_port: int | None = None,
    extra_env: Mapping[str, str] | None = None,
    lift_upstream_limit: bool = False,
    gc_mode: str = "default",
) -> Proc:
    """``controlplane serve`` on a free loopback port, tokens via CONTROLPLANE_TOKENS.

    ``lift_upstream_limit``: run it through ``LIFT_UPSTREAM_LIMIT`` (see above); ``gc_mode``:
    one of ``GC_PRELUDES`` (an experiment, not how serve runs)."""
    port = free_port()
    env = _base_env()
    env["CONTROLPLANE_TOKENS"] = f"admin:{token}"
    env["CONTROLPLANE_DATA_DIR"] = str(workdir / "data")
    env["CONTROLPLANE_NODE_ID"] = "bench"
    env["CONTROLPLANE_SHUTDOWN_GRACE_S"] = "1"
    if emulator_port is not None:
        env["CONTROLPLANE_UPSTREAM_STREAMING_URL"] = f"ws://{LOOPBACK}:{emulator_port}/v3/ws"
        env["CONTROLPLANE_UPSTREAM_AGENT_URL"] = f"ws://{LOOPBACK}:{emulator_port}/v1/ws"
    env.update(extra_env or {})
    serve = ["serve", "--listen", f"{LOOPBACK}:{port}"]
    exe = BIN / "controlplane"
    prelude = (LIFT_UPSTREAM_LIMIT if lift_upstream_limit else "") + GC_PRELUDES[gc_mode]
    if prelude or not exe.exists() or SOURCE != ROOT:
        argv = [sys.executable, "-c", prelude + RUN_CLI, *serve]
    else:
        argv = [str(exe), *serve]
    return _spawn("controlplane", argv, port, workdir, env)


def start_baseline(workdir: Path, mode: str, *, upstream: str | None = None) -> Proc:
    """``loadtest/baseline_server.py``: the bare servers the benchmarks compare against."""
    port = free_port()
    argv = [
        sys.executable,
        str(LOADTEST / "baseline_server.py"),
        "--mode",
        mode,
        "--port",
        str(port),
    ]
    if upstream:
        argv += ["--upstream", upstream]
    return _spawn(f"baseline-{mode}", argv, port, workdir, _base_env())


@contextlib.contextmanager
def workdir(prefix: str = "cp-bench-", keep: bool = False) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def new_token() -> str:
    return "bench-" + secrets.token_hex(24)


def process_usage(pid: int) -> tuple[float, float]:
    """(RSS in KiB, CPU seconds user+system) of ``pid`` from /proc."""
    rss_kib = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = float(line.split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss_kib, (int(fields[11]) + int(fields[12])) / ticks


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


# -- audio -----------------------------------------------------------------------------------
def pcm_tone(
    ms: int = FRAME_MS, rate: int = STREAMING_RATE, freq: float = 440.0, amplitude: int = 9000
) -> bytes:
    n = rate * ms // 1000
    return struct.pack(
        f"<{n}h", *(int(amplitude * math.sin(2 * math.pi * freq * i / rate)) for i in range(n))
    )


def pcm_silence(ms: int = FRAME_MS, rate: int = STREAMING_RATE) -> bytes:
    return b"\x00\x00" * (rate * ms // 1000)


# -- policies --------------------------------------------------------------------------------
MARKER_RE = re.compile(r"\[lt:([a-z0-9-]+):(\d+)(?::(\d+))?\]")


def marker(policy_id: str, seq: int, published_ms: int | None = None) -> str:
    """The text a published version carries so a receiver can tell which publish it saw
    (and, with ``published_ms``, when it was published: wall-clock milliseconds)."""
    if published_ms is None:
        return f"[lt:{policy_id}:{seq}]"
    return f"[lt:{policy_id}:{seq}:{published_ms}]"


def find_marker(text: str) -> tuple[str, int, float | None] | None:
    """(policy id, seq, publish wall time in seconds or None) of the first marker in text."""
    found = MARKER_RE.search(text)
    if not found:
        return None
    at = found.group(3)
    return found.group(1), int(found.group(2)), (int(at) / 1000 if at else None)


def policy_doc(
    policy_id: str,
    seq: int,
    *,
    published_ms: int | None = None,
    labels: Mapping[str, str] | None = None,
    prompt_chars: int = 120,
    keyterms: int = 0,
    kinds: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A policy version whose prompt starts with ``marker(policy_id, seq)``, padded."""
    head = marker(policy_id, seq, published_ms) + " "
    prompt = (head + "This call is recorded for quality. " * 60)[: max(len(head), prompt_chars)]
    body: dict[str, Any] = {"prompt": prompt}
    if keyterms:
        body["keyterms"] = [f"term{seq}x{i}" for i in range(keyterms)]
    match: dict[str, Any] = {}
    if labels:
        match["labels"] = dict(labels)
    if kinds:
        match["kind"] = list(kinds)
    return {"id": policy_id, "priority": 100, "match": match, "set": body}


# -- emulator inspection ----------------------------------------------------------------------
def emulator_receipts(
    emu_http: str, ids: list[str], mark: str, expected: int, timeout: float
) -> list[float]:
    """Wait until the emulator counted ``expected`` updates, then read each session's ``at``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, stats = http_json(emu_http + "/_emulator/stats")
        if stats["kinds"]["streaming-v3"]["updates"] >= expected:
            break
        time.sleep(0.05)

    def one(upstream_id: str) -> float | None:
        _, body = http_json(f"{emu_http}/_emulator/sessions/{upstream_id}")
        for entry in body.get("timeline", []):
            if mark in json.dumps(entry.get("message")):
                return float(entry["at"])
        return None

    with ThreadPoolExecutor(16) as pool:
        found = list(pool.map(one, ids))
    return [t for t in found if t is not None]


# -- /metrics --------------------------------------------------------------------------------
def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {"name{labels}": value} (comments skipped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[name] = float(value)
    return out


def scrape(base: str) -> dict[str, float]:
    if not base.startswith(f"http://{LOOPBACK}:"):
        raise ValueError(f"refusing to scrape {base}")
    with urllib.request.urlopen(base + "/metrics", timeout=30) as resp:
        return parse_metrics(resp.read().decode())


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
