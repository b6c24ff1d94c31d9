"""`controlplane serve` as a real process: generated admin token, loopback binding, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import websockets

from controlplane.edges.client import ControlClient
from tests.support.servers import free_port, wait_port

EXE = str(Path(sys.executable).parent / "controlplane")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
    env["CONTROLPLANE_DATA_DIR"] = str(tmp_path / "data")
    env.update(extra)
    return env


def _read_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 20) -> list[str]:
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line.rstrip("\n"))
        if line.startswith(prefix):
            return seen
    raise AssertionError(f"no line starting with {prefix!r} in {seen}")


@pytest.fixture
def stop() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


def test_without_tokens_an_admin_token_is_printed_once_and_only_loopback_is_bound(
    tmp_path: Path, stop: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [EXE, "serve", "--listen", f"0.0.0.0:{port}"], env=_env(tmp_path),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    stop.append(proc)
    lines = _read_line(proc, "controlplane serving on")
    assert any("Generated an admin token" in ln for ln in lines)
    token = lines[lines.index(next(ln for ln in lines if "Generated" in ln)) + 1].strip()
    assert len(token) >= 32
    assert any("binding to 127.0.0.1 only" in ln for ln in lines)
    assert "http://127.0.0.1:" in lines[-1]
    wait_port(port, proc=proc)  # type: ignore[arg-type]

    async def check() -> None:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port}/v1/policies"
            async with http.get(url) as r:
                assert r.status == 401
            headers = {"Authorization": f"Bearer {token}"}
            async with http.post(url, json={"id": "p", "set": {"prompt": "x"}},
                                 headers=headers) as r:  # fmt: skip
                assert r.status == 201, await r.text()

    asyncio.run(check())


def test_sigterm_drains_live_sessions_closes_them_with_1012_and_keeps_the_audit(
    tmp_path: Path, stop: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    env = _env(tmp_path, CONTROLPLANE_TOKENS="admin:secret-admin-token",
               CONTROLPLANE_SHUTDOWN_GRACE_S="1.0")  # fmt: skip
    proc = subprocess.Popen(
        [EXE, "serve", "--listen", f"127.0.0.1:{port}"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    stop.append(proc)
    _read_line(proc, "controlplane serving on")
    wait_port(port, proc=proc)  # type: ignore[arg-type]

    async def scenario() -> tuple[int | None, str]:
        async with ControlClient(f"ws://127.0.0.1:{port}/v1/control", token="secret-admin-token",
                                 kind="voice-agent-v1", model="voice-agent",
                                 config={"system_prompt": "hi"}) as app:  # fmt: skip
            assert app.session_id is not None
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            with pytest.raises(websockets.ConnectionClosed) as closed:
                async for _ in app.pushes():
                    pass
            waited = time.monotonic() - started
            assert waited >= 0.8, "sessions must be given the grace period"
            rcvd = closed.value.rcvd
            return (rcvd.code if rcvd else None), app.session_id

    code, session_id = asyncio.run(scenario())
    assert code == 1012
    assert proc.wait(timeout=20) == 0
    audit = list((tmp_path / "data" / "audit").glob("*.jsonl"))
    entries = [json.loads(ln) for f in audit for ln in f.read_text().splitlines()]
    mine = [e for e in entries if e.get("session_id") == session_id]  # not checkpoints
    assert [e["cause"] for e in mine] == ["connect"]
    assert "secret-admin-token" not in "".join(f.read_text() for f in audit)


def _read_until(proc: subprocess.Popen[str], text: str, timeout: float = 20) -> list[str]:
    """Output lines up to the first containing ``text``."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line.rstrip("\n"))
        if text in line:
            return seen
    raise AssertionError(f"no line containing {text!r} in {seen}")


def test_drain_says_what_it_waits_for_and_a_second_signal_closes_sessions_now(
    tmp_path: Path, stop: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    env = _env(tmp_path, CONTROLPLANE_TOKENS="admin:secret-admin-token",
               CONTROLPLANE_SHUTDOWN_GRACE_S="30")  # fmt: skip
    proc = subprocess.Popen(
        [EXE, "serve", "--listen", f"127.0.0.1:{port}"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    stop.append(proc)
    _read_line(proc, "controlplane serving on")
    wait_port(port, proc=proc)  # type: ignore[arg-type]

    async def scenario() -> tuple[int | None, float, list[str]]:
        async with ControlClient(f"ws://127.0.0.1:{port}/v1/control", token="secret-admin-token",
                                 kind="voice-agent-v1", model="voice-agent") as app:  # fmt: skip
            proc.send_signal(signal.SIGINT)  # Ctrl-C
            first = await asyncio.to_thread(_read_until, proc, "draining:")
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                async for _ in app.pushes():
                    pass
            rcvd = closed.value.rcvd
            return (rcvd.code if rcvd else None), time.monotonic() - started, first

    code, waited, first = asyncio.run(scenario())
    assert code == 1012
    assert waited < 10, "the second signal must not wait out the 30 s grace"
    assert first[-1].endswith(
        "draining: not ready, refusing new sessions; waiting up to 30s for 1 live session(s) "
        "to end, then closing the rest (1012 service restart); Ctrl-C / SIGTERM again closes "
        "them now"
    )
    assert proc.stdout is not None
    rest = proc.stdout.read()
    assert proc.wait(timeout=20) == 0
    assert (
        "second signal: closing the 1 live session(s) now; a third one stops the process "
        "at once" in rest
    )
    assert "closing 1 session(s) still open on a second signal" in rest
    assert "drained: audit log flushed" in rest
