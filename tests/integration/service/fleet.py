"""Many sessions at once for rollout tests: Voice Agent sessions through the gateway (real
websockets to the emulator) and control-channel apps that acknowledge, fail, hold or ignore
the pushes they receive. Everything opened is closed by ``Fleet.close`` (no leaked tasks)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import websockets
from websockets.asyncio.client import ClientConnection

from controlplane.edges.client import ControlClient, ServerPush
from tests.integration.service.conftest import ADMIN

Mode = Literal["ack", "fail", "hold", "silent"]


@dataclass
class Agent:
    """A Voice Agent session through the gateway: its socket and upstream (emulator) id."""

    ws: ClientConnection
    upstream_id: str


@dataclass
class App:
    """A control-channel app. ``ack``: reports ``applied``; ``fail``: reports ``failed``;
    ``hold`` / ``silent``: reports nothing (the test answers, or nobody does)."""

    client: ControlClient
    mode: Mode
    pushes: asyncio.Queue[ServerPush] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None

    @property
    def session_id(self) -> str:
        assert self.client.session_id is not None
        return self.client.session_id

    async def run(self) -> None:
        with contextlib.suppress(Exception):  # the channel closed: the test is over
            async for push in self.client.pushes():
                await self.pushes.put(push)
                if self.mode == "ack":
                    await self.client.applied(push.version)
                elif self.mode == "fail":
                    await self.client.failed(push.version, "refused by the test app")

    async def next_push(self, timeout: float) -> ServerPush | None:
        try:
            return await asyncio.wait_for(self.pushes.get(), timeout)
        except TimeoutError:
            return None

    async def got(self, version: int, timeout: float) -> bool:
        """Whether the app gets a push of ``version`` (or later) within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            push = await self.next_push(max(0.01, deadline - time.monotonic()))
            if push is not None and push.version >= version:
                return True
        return False

    async def version_of_prompt(self, prompt: str, timeout: float) -> int | None:
        """The version of the first push within ``timeout`` that sets the agent's
        ``system_prompt`` to ``prompt`` alone (None: none came)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            push = await self.next_push(left)
            if push is None:
                return None
            if push.message.get("session") == {"system_prompt": prompt}:
                return push.version
        return None


@dataclass
class Fleet:
    ws_base: str
    agents: list[Agent] = field(default_factory=list)
    apps: list[App] = field(default_factory=list)

    async def agent(self, labels: str) -> Agent:
        ws = await websockets.connect(
            self.ws_base + "/v1/ws",
            additional_headers={"Authorization": "Bearer test-key", "X-Session-Labels": labels},
        )
        try:  # the first session.update creates the session (the late-joiner merge point)
            await ws.send(json.dumps({"type": "session.update", "session": {}}))
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if msg.get("type") == "session.ready":
                    break
        except BaseException:
            await ws.close()
            raise
        agent = Agent(ws, str(msg["session_id"]))
        self.agents.append(agent)
        return agent

    async def open_agents(self, n: int, labels: str) -> list[Agent]:
        return list(await asyncio.gather(*(self.agent(labels) for _ in range(n))))

    async def app(
        self,
        mode: Mode,
        *,
        kind: str = "voice-agent-v1",
        labels: dict[str, str] | None = None,
        config: dict[str, Any] | None = None,
        session_id: str | None = None,
    ) -> App:
        model = "voice-agent" if kind == "voice-agent-v1" else "u3-rt-pro"
        client = ControlClient(self.ws_base + "/v1/control", token=ADMIN, kind=kind,
                               model=model, labels=labels or {}, config=config or {},
                               session_id=session_id)  # fmt: skip
        await client.__aenter__()
        app = App(client, mode)
        app.task = asyncio.get_running_loop().create_task(app.run(), name="fleet-app")
        self.apps.append(app)
        return app

    async def open_apps(self, n: int, mode: Mode, **kw: Any) -> list[App]:
        return list(await asyncio.gather(*(self.app(mode, **kw) for _ in range(n))))

    async def close(self) -> None:
        for app in self.apps:
            await app.client.close()
        for app in self.apps:
            if app.task is not None:
                app.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await app.task
        await asyncio.gather(*(a.ws.close() for a in self.agents), return_exceptions=True)
        self.apps.clear()
        self.agents.clear()


async def metric(http: Any, base: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (GET /metrics)."""
    async with http.get(base + "/metrics") as resp:
        return metric_sum(await resp.text(), name, **labels)


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` in a /metrics text."""
    total = 0.0
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if line.startswith("#") or head.split("{", 1)[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total
