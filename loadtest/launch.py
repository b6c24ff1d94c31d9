"""The servers a benchmark starts as subprocesses on 127.0.0.1 (stdlib only): ``controlplane
serve``, the emulator and the baseline servers, each with a raised open-files limit, stopped by
``Proc.stop()`` (never by name); the source tree they run and its revision; scratch
directories, tokens and a process's memory and CPU.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopback import LOOPBACK, free_port, raise_nofile, wait_port

__all__ = [
    "BIN",
    "GC_PRELUDES",
    "LIFT_UPSTREAM_LIMIT",
    "LOADTEST",
    "ROOT",
    "RUN_CLI",
    "SOURCE",
    "Proc",
    "cpu_bound_ms",
    "new_token",
    "process_usage",
    "source_revision",
    "start_baseline",
    "start_controlplane",
    "start_emulator",
    "thread_cpu",
    "workdir",
]

ROOT = Path(__file__).resolve().parent.parent
LOADTEST = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def _child_setup() -> None:  # preexec_fn of every subprocess we start
    raise_nofile()


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
    name: str,
    argv: Sequence[str],
    port: int,
    workdir: Path,
    env: Mapping[str, str],
    source: Path | None = None,
) -> Proc:
    log_path = workdir / f"{name}.log"
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            list(argv),
            cwd=source or SOURCE,
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


def _base_env(source: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTROLPLANE_", "EMULATOR_"))}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(source or SOURCE), env.get("PYTHONPATH")])
    )
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
    source: Path | None = None,
) -> Proc:
    """``controlplane serve`` on a free loopback port, tokens via CONTROLPLANE_TOKENS.

    ``lift_upstream_limit``: run it through ``LIFT_UPSTREAM_LIMIT`` (see above); ``gc_mode``:
    one of ``GC_PRELUDES`` (an experiment, not how serve runs); ``source``: run this source
    tree instead of ``SOURCE`` (e.g. a ``git archive`` of an earlier commit, to compare in the
    same run)."""
    port = free_port()
    env = _base_env(source)
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
    if prelude or not exe.exists() or (source or SOURCE) != ROOT:
        argv = [sys.executable, "-c", prelude + RUN_CLI, *serve]
    else:
        argv = [str(exe), *serve]
    return _spawn("controlplane", argv, port, workdir, env, source)


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


def thread_cpu(pid: int) -> float:
    """CPU seconds of the process's main thread (serve: its event loop): its time on a CPU
    in nanoseconds from ``schedstat`` (the clock-tick counts of ``stat`` move in 10 ms steps,
    a microsecond per session of a 10,000-session publish), else user+system ticks."""
    try:
        return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_bound_ms(server_s: float, clients_s: float) -> float:
    """The shortest a publish -> last frame could take if the server's and the clients' CPU
    (publish -> last receipt) kept every core busy: (server + clients) / cores."""
    return round((server_s + clients_s) / (os.cpu_count() or 1) * 1000, 1)
