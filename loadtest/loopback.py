"""Talking to the servers on 127.0.0.1: the open-files limit, free ports, a loopback-only
JSON client, ``/metrics`` parsing and the emulator's receipts (stdlib only, safe under gevent).
Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = [
    "LOOPBACK",
    "emulator_receipts",
    "free_port",
    "http_json",
    "parse_metrics",
    "raise_nofile",
    "scrape",
    "wait_port",
]

LOOPBACK = "127.0.0.1"


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
