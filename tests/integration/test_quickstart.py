"""The README's first command: `controlplane serve` starts on embedded defaults and answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.servers import free_port, wait_port


def test_serve_starts_on_embedded_defaults_and_answers_healthz(tmp_path: Path) -> None:
    port = free_port()
    exe = Path(sys.executable).parent / "controlplane"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
    env["CONTROLPLANE_DATA_DIR"] = str(tmp_path)
    proc = subprocess.Popen(
        [str(exe), "serve", "--listen", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_port(port, timeout=20, proc=proc)
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    body = json.loads(resp.read())
                    assert resp.status == 200
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert body["status"] == "ok"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
