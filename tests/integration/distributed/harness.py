"""Helpers of the signing, readiness and NATS-restart tests: ``controlplane serve`` processes
with extra flags whose output goes through a pipe (so a file-size limit put on the process
cannot break its logging), signed raw publishing, reads of a whole stream, ``/readyz``.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nats

from controlplane.audit.batches import unpack
from controlplane.signing import SIGNATURE_HEADER, signature
from tests.integration.distributed.conftest import EXE, Cluster
from tests.support.servers import free_port, wait_port

__all__ = [
    "Spawned",
    "Stored",
    "get",
    "publish_signed",
    "ready",
    "spawn",
    "stream_events",
]


async def publish_signed(
    cluster: Cluster,
    policy_id: str,
    body: bytes,
    *,
    msg_id: str,
    key: str | None,
    signed_msg_id: str | None = None,
    signed_body: bytes | None = None,
) -> Any:
    """Publish raw bytes as another tool would, signed when ``key`` is given: over
    ``signed_msg_id`` and ``signed_body`` (default: what is published) to forge replays and
    tampering."""
    headers = {"Nats-Msg-Id": msg_id}
    if key is not None:
        signed = signed_body if signed_body is not None else body
        headers[SIGNATURE_HEADER] = signature(key.encode(), signed_msg_id or msg_id, signed)
    nc = await cluster.nats()
    try:
        subject = f"{cluster.subject_prefix}.policy.{policy_id}"
        return await nc.jetstream().publish(subject, body, headers=headers)
    finally:
        await nc.close()


@dataclass(frozen=True)
class Stored:
    seq: int
    subject: str
    headers: dict[str, str]
    data: bytes

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.data))

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The lines of a ``CP_AUDIT`` message: one, or a batch's (controlplane.audit.batches)."""
        return [dict(json.loads(line)) for line in unpack(self.data, self.headers)]


async def stream_events(nats_url: str, stream: str) -> list[Stored]:
    """Every message of a stream, in order."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        last = (await js.stream_info(stream)).state.last_seq
        out = []
        for seq in range(1, last + 1):
            msg = await js.get_msg(stream, seq)
            out.append(Stored(seq, str(msg.subject), dict(msg.headers or {}), msg.data or b""))
        return out
    finally:
        await nc.close()


async def get(http: aiohttp.ClientSession, url: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(url, headers=headers) as resp:
        return resp.status, await resp.json()


async def ready(http: aiohttp.ClientSession, base: str) -> tuple[bool, dict[str, Any]]:
    status, body = await get(http, base + "/readyz")
    assert (status == 200) is bool(body["ready"])
    return bool(body["ready"]), dict(body["checks"])


@dataclass
class Spawned:
    proc: subprocess.Popen[bytes]
    base: str
    log_path: Path
    data_dir: Path
    _pump: threading.Thread

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._pump.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def spawn(cluster: Cluster, node: str, *args: str, env: dict[str, str] | None = None) -> Spawned:
    """``controlplane serve`` on the cluster's NATS, Redis and streams, with extra flags and
    environment. Its output is pumped from a pipe into ``<root>/<node>.log`` by this process."""
    port = free_port()
    full = cluster.serve_env(node, port)
    full.update({
        "CONTROLPLANE_AUDIT_SHIP_INTERVAL_S": "0.1",
        "CONTROLPLANE_SHUTDOWN_GRACE_S": "0.2",
    })  # fmt: skip
    full.update(env or {})
    log_path = cluster.root / f"{node}.log"
    proc = subprocess.Popen(
        [EXE, "serve", *args], env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    out = proc.stdout

    def pump() -> None:
        with log_path.open("ab") as sink:
            for line in iter(out.readline, b""):
                sink.write(line)
                sink.flush()

    thread = threading.Thread(target=pump, name=f"log-{node}", daemon=True)
    thread.start()
    try:
        wait_port(port, timeout=30, proc=proc)
    except Exception:
        proc.kill()
        proc.wait(5)
        thread.join(5)
        raise AssertionError(f"{node} did not start:\n{log_path.read_text()}") from None
    # the port opens before the replay is done: wait until the replica is ready
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.1)
    data_dir = cluster.settings(node).data_dir
    return Spawned(proc, f"http://127.0.0.1:{port}", log_path, data_dir, thread)
