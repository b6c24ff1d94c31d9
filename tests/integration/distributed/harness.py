"""Helpers of the signing, readiness and NATS-restart tests: ``controlplane serve`` processes
with extra flags whose output goes through a pipe (so a file-size limit put on the process
cannot break its logging), signed raw publishing, reads of a whole stream, ``/readyz``; a
checkpointed version log shipped to a test's own ``CP_AUDIT`` stream and verified from it.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from controlplane import cli
from controlplane.audit.batches import unpack
from controlplane.audit.shipper import AuditShipper
from controlplane.cluster.nats_audit import NatsAuditStream
from controlplane.cluster.nats_bus import NatsConnection
from controlplane.metrics import Metrics
from controlplane.signing import SIGNATURE_HEADER, signature
from sessions.checkpoints import CheckpointSigner
from sessions.clock import Clock
from sessions.versionlog.file import Checkpointing, FileVersionLog
from tests.integration.distributed.conftest import EXE, Cluster
from tests.support.servers import free_port, wait_port

__all__ = [
    "Spawned",
    "Stored",
    "checkpointed_log",
    "get",
    "publish_signed",
    "ready",
    "shipper",
    "spawn",
    "stream_events",
    "verify_stream",
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


def checkpointed_log(
    root: Path, clock: Clock, signer: CheckpointSigner, node: str
) -> FileVersionLog:
    """A version log under ``root`` whose checkpoints are written only when the test asks
    (``checkpoint()``, ``close()``), flushed only when it asks, without fsync."""
    ck = Checkpointing(signer, node, every_entries=10**9, interval_s=3600)
    return FileVersionLog(root, clock, fsync=False, flush_interval_s=None, checkpointing=ck)


async def _flushed() -> None:
    return None  # the test flushed (and closed) the log itself


def shipper(root: Path, conn: NatsConnection) -> AuditShipper:
    """The shipper of the log under ``root`` to ``conn``'s ``CP_AUDIT`` stream, its cursor
    next to ``root`` (a later shipper of the same log continues from it)."""
    return AuditShipper(root, root.parent / "cursor.json", NatsAuditStream(conn),
                        flush=_flushed, metrics=Metrics())  # fmt: skip


def verify_stream(
    nats_url: str, stream: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> dict[str, Any]:
    """``controlplane audit verify --json`` of the whole stream, as a fresh process reads it
    (every trail, every checkpoint): its answer, the exit code asserted 0."""
    capsys.readouterr()
    code = cli.main(["audit", "verify", "--json", "--nats-url", nats_url,
                     "--nats-audit-stream", stream, "--nats-subject-prefix", prefix])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out[-2000:]
    answer: dict[str, Any] = json.loads(out)
    return answer


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


def spawn(
    cluster: Cluster,
    node: str,
    *args: str,
    env: dict[str, str] | None = None,
    wrap: Sequence[str] = (),
) -> Spawned:
    """``controlplane serve`` on the cluster's NATS, Redis and streams, with extra flags and
    environment, run by the command ``wrap`` when given (it must exec its arguments: the
    process is the replica). Its output is pumped from a pipe into ``<root>/<node>.log`` by
    this process."""
    port = free_port()
    full = cluster.serve_env(node, port)
    full.update({
        "CONTROLPLANE_AUDIT_SHIP_INTERVAL_S": "0.1",
        "CONTROLPLANE_SHUTDOWN_GRACE_S": "0.2",
    })  # fmt: skip
    full.update(env or {})
    log_path = cluster.root / f"{node}.log"
    proc = subprocess.Popen(
        [*wrap, EXE, "serve", *args], env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
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
