"""Two or more control-plane replicas on one real NATS JetStream and one real Redis.

Each test gets its own streams, subject prefix and Redis key prefix (``Cluster.settings``),
so tests never see each other's policies, sessions or audit entries. Replicas run in the
test's event loop on free ports (``Cluster.start``), or as a ``controlplane serve`` process
(``Cluster.spawn``) where the test must SIGKILL one.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from aiohttp import web
from nats.aio.client import Client as NatsClient

from controlplane.app import SERVICE, build_app
from controlplane.config import Settings
from controlplane.edges.client import ControlClient
from emulator.server import build_app as build_emulator
from emulator.settings import EmulatorSettings
from tests.integration.service.conftest import (
    ADMIN,
    TOKENS,
    ControlPlaneUnderTest,
    Emulator,
    _serve,
)
from tests.integration.service.fleet import metric_sum
from tests.support.servers import ServerProcess, free_port, nats_server, redis_server, wait_port

EXE = str(Path(sys.executable).parent / "controlplane")
TTL_S = 1.5
HEARTBEAT_S = 0.3
STOP_WAIT_S = 20.0


@dataclass
class Replica(ControlPlaneUnderTest):
    runner: web.AppRunner | None = None
    settings: Settings | None = None

    def client(self, **kw: Any) -> ControlClient:
        kw.setdefault("kind", "voice-agent-v1")
        kw.setdefault("model", "voice-agent")
        return ControlClient(self.ws_base + "/v1/control", token=ADMIN, **kw)

    async def stop(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()

    async def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        return metric_sum(str(await self.call("GET", "/metrics", token=None)), name, **labels)


@dataclass
class Cluster:
    nats_url: str
    redis_url: str
    emulator: Emulator
    root: Path
    http: aiohttp.ClientSession
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    replicas: list[Replica] = field(default_factory=list)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def subject_prefix(self) -> str:
        return f"t{self.uid}"

    @property
    def policy_stream(self) -> str:
        return f"CP_POLICY_{self.uid}"

    @property
    def audit_stream(self) -> str:
        return f"CP_AUDIT_{self.uid}"

    def settings(self, node: str, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "upstream_streaming_url": f"ws://127.0.0.1:{self.emulator.port}/v3/ws",
            "upstream_agent_url": f"ws://127.0.0.1:{self.emulator.port}/v1/ws",
            "data_dir": self.root / node,
            "node_id": node,
            "tokens": TOKENS,
            "ack_timeout_s": 3.0,
            "shutdown_grace_s": 0.2,
            "nats_url": self.nats_url,
            "redis_url": self.redis_url,
            "redis_prefix": f"t{self.uid}:",
            "nats_subject_prefix": self.subject_prefix,
            "nats_policy_stream": self.policy_stream,
            "nats_audit_stream": self.audit_stream,
            "heartbeat_interval_s": HEARTBEAT_S,
            "session_ttl_s": TTL_S,
            "rollout_sync_interval_s": 0.2,
            "audit_ship_interval_s": 0.1,
        }
        values.update(overrides)
        return Settings(**values)

    async def start(self, node: str, **overrides: Any) -> Replica:
        settings = self.settings(node, **overrides)
        app = build_app(settings)
        runner, port = await _serve(app)
        replica = Replica(port, self.http, app[SERVICE], settings.data_dir, runner=runner,
                          settings=settings)  # fmt: skip
        self.replicas.append(replica)
        return replica

    def serve_env(self, node: str, port: int) -> dict[str, str]:
        """This process's environment without ``CONTROLPLANE_*``, plus what ``controlplane
        serve`` needs to run as ``node`` on ``port`` in this cluster."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
        s = self.settings(node)
        env.update({
            "CONTROLPLANE_LISTEN": f"127.0.0.1:{port}",
            "CONTROLPLANE_TOKENS": ",".join(f"{r}:{t}" for t, r in TOKENS.items()),
            "CONTROLPLANE_DATA_DIR": str(s.data_dir),
            "CONTROLPLANE_NODE_ID": node,
            "CONTROLPLANE_NATS_URL": self.nats_url,
            "CONTROLPLANE_REDIS_URL": self.redis_url,
            "CONTROLPLANE_REDIS_PREFIX": s.redis_prefix,
            "CONTROLPLANE_NATS_SUBJECT_PREFIX": s.nats_subject_prefix,
            "CONTROLPLANE_NATS_POLICY_STREAM": s.nats_policy_stream,
            "CONTROLPLANE_NATS_AUDIT_STREAM": s.nats_audit_stream,
            "CONTROLPLANE_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
            "CONTROLPLANE_SESSION_TTL_S": str(TTL_S),
            "CONTROLPLANE_UPSTREAM_AGENT_URL": s.upstream_agent_url,
            "CONTROLPLANE_UPSTREAM_STREAMING_URL": s.upstream_streaming_url,
        })  # fmt: skip
        return env

    def spawn(
        self, node: str, env_extra: dict[str, str] | None = None
    ) -> tuple[subprocess.Popen[str], str]:
        """``controlplane serve`` as a process (same cluster settings, plus ``env_extra``
        ``CONTROLPLANE_*`` variables); returns it and its URL."""
        port = free_port()
        env = self.serve_env(node, port)
        env.update(env_extra or {})
        log = (self.root / f"{node}.log").open("w")
        proc = subprocess.Popen([EXE, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                text=True)  # fmt: skip
        log.close()
        self.procs.append(proc)
        wait_port(port, timeout=30, proc=proc)  # type: ignore[arg-type]
        return proc, f"127.0.0.1:{port}"

    def proc_log(self, node: str) -> str:
        return (self.root / f"{node}.log").read_text()

    async def nats(self) -> NatsClient:
        return await nats.connect(self.nats_url)

    async def publish_raw(
        self, policy_id: str, data: bytes | dict[str, Any], msg_id: str | None = None
    ) -> Any:
        """Publish straight to the policy stream, as another tool would."""
        nc = await self.nats()
        try:
            body = data if isinstance(data, bytes) else json.dumps(data).encode()
            headers = {"Nats-Msg-Id": msg_id} if msg_id else None
            return await nc.jetstream().publish(
                f"{self.subject_prefix}.policy.{policy_id}", body, headers=headers
            )
        finally:
            await nc.close()

    async def close(self) -> None:
        for replica in reversed(self.replicas):
            try:
                await asyncio.wait_for(asyncio.shield(replica.stop()), STOP_WAIT_S)
            except TimeoutError:  # say what is stuck instead of hitting the test timeout
                stacks = io.StringIO()
                for task in asyncio.all_tasks():
                    task.print_stack(file=stacks)
                raise AssertionError(
                    f"replica {replica.port} did not stop:\n{stacks.getvalue()}"
                ) from None
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            await asyncio.to_thread(proc.wait, 10)
        nc = await self.nats()
        try:
            js = nc.jetstream()
            for stream in (self.policy_stream, self.audit_stream):
                try:
                    await js.delete_stream(stream)
                except Exception:
                    pass
        finally:
            await nc.close()


def event(policy: dict[str, Any], kind: str = "policy.published") -> dict[str, Any]:
    """A wire event as DESIGN.md §4 describes it."""
    return {"type": kind, "policy": policy, "actor": "ops-tool",
            "published_at": "2026-01-01T00:00:00Z", "event_id": uuid.uuid4().hex}  # fmt: skip


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """The in-process AssemblyAI stand-in the replicas' gateways connect to."""
    runner, port = await _serve(build_emulator(EmulatorSettings(pacing_tolerance_ms=5000.0)))
    async with aiohttp.ClientSession() as http:
        yield Emulator(port, http)
    await runner.cleanup()


@pytest.fixture
async def cluster(
    nats_url: str, redis_url: str, emulator: Emulator, tmp_path: Path
) -> AsyncIterator[Cluster]:
    async with aiohttp.ClientSession() as http:
        c = Cluster(nats_url, redis_url, emulator, tmp_path, http)
        try:
            yield c
        finally:
            await c.close()


@pytest.fixture
def own_nats() -> Iterator[ServerProcess]:
    """A nats-server of this test's own, so it can be stopped, paused or restarted without
    touching the one the rest of the suite shares."""
    with nats_server() as server:
        yield server


@pytest.fixture
def own_redis() -> Iterator[ServerProcess]:
    """A redis-server of this test's own (no persistence: a restart comes back empty)."""
    with redis_server() as server:
        yield server


@pytest.fixture
async def redis_cluster(
    nats_url: str, own_redis: ServerProcess, emulator: Emulator, tmp_path: Path
) -> AsyncIterator[Cluster]:
    """Replicas on the suite's NATS and this test's own Redis (which it may kill or restart)."""
    async with aiohttp.ClientSession() as http:
        c = Cluster(nats_url, own_redis.url, emulator, tmp_path, http)
        try:
            yield c
        finally:
            await c.close()


@pytest.fixture
async def own_cluster(
    own_nats: ServerProcess, own_redis: ServerProcess, emulator: Emulator, tmp_path: Path
) -> AsyncIterator[Cluster]:
    """Replicas on this test's own NATS and Redis."""
    async with aiohttp.ClientSession() as http:
        c = Cluster(own_nats.url, own_redis.url, emulator, tmp_path, http)
        try:
            yield c
        finally:
            await c.close()
