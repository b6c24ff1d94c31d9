"""``serve`` and ``emulator`` as real processes over TLS: a websockets client speaks wss:// to
the gateway, whose upstream is the emulator over wss://."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
from pathlib import Path

import websockets

from tests.integration.test_serve_process import EXE, _env, _read_line, stop  # noqa: F401
from tests.support.servers import free_port, wait_port
from tests.support.tls import self_signed


def test_serve_and_emulator_serve_wss_with_a_self_signed_certificate(
    tmp_path: Path,
    stop: list[subprocess.Popen[str]],  # noqa: F811
) -> None:
    cert, key = self_signed(tmp_path)
    emu_port, cp_port = free_port(), free_port()
    # the emulator through the flags, serve through CONTROLPLANE_TLS_*; both trust the cert
    # through SSL_CERT_FILE (the gateway's upstream connection is wss:// too)
    emulator = subprocess.Popen(
        [EXE, "emulator", "--listen", f"127.0.0.1:{emu_port}",
         "--tls-cert", str(cert), "--tls-key", str(key)],
        env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    stop.append(emulator)
    assert "https://127.0.0.1:" in _read_line(emulator, "emulator listening on")[-1]
    env = _env(
        tmp_path,
        CONTROLPLANE_TLS_CERT=str(cert), CONTROLPLANE_TLS_KEY=str(key), SSL_CERT_FILE=str(cert),
        CONTROLPLANE_TOKENS="admin:tok-admin",
        CONTROLPLANE_UPSTREAM_STREAMING_URL=f"wss://127.0.0.1:{emu_port}/v3/ws",
    )  # fmt: skip
    serve = subprocess.Popen(
        [EXE, "serve", "--listen", f"127.0.0.1:{cp_port}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    stop.append(serve)
    assert "https://127.0.0.1:" in _read_line(serve, "controlplane serving on")[-1]
    wait_port(cp_port, proc=serve)  # type: ignore[arg-type]

    trust = ssl.create_default_context(cafile=str(cert))

    async def scenario() -> tuple[dict[str, object], int]:
        url = (f"wss://127.0.0.1:{cp_port}/labels/tls=yes/v3/ws"
               "?sample_rate=16000&speech_model=universal-3-5-pro")  # fmt: skip
        async with websockets.connect(
            url, ssl=trust, additional_headers={"Authorization": "k"}
        ) as ws:
            begin = json.loads(await asyncio.wait_for(ws.recv(), 10))
        plain = f"ws://127.0.0.1:{cp_port}/v3/ws?sample_rate=16000"
        try:
            async with websockets.connect(plain, open_timeout=5):
                refused = 0
        except (websockets.InvalidHandshake, OSError, TimeoutError):
            refused = 1
        return begin, refused

    begin, refused = asyncio.run(scenario())
    assert begin["type"] == "Begin"
    assert refused == 1  # no plain ws:// beside TLS
