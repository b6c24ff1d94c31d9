"""A nats-server paused for 15 s (SIGSTOP: its sockets stay open, nothing answers), then
resumed, under a ``controlplane serve`` replica (issue #19 item 2). Before: REST publishing
answered 503 and no event was applied for ~5 minutes after SIGCONT while ``/readyz`` said 200:
a PONG arriving after its flush had timed out killed nats-py's read loop, and the default
PING interval (2 min) was the only thing that could notice. Now: ``/readyz`` is 503 during the
outage, publishing works again within 10 s of SIGCONT, the event is applied and pushed, and
``/readyz`` is 200 again within seconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest

from controlplane.edges.client import ControlClient
from tests.integration.distributed.conftest import Cluster
from tests.integration.distributed.harness import Spawned, ready, spawn
from tests.integration.service.conftest import ADMIN
from tests.support.servers import ServerProcess

PAUSE_S = 15.0
RECOVERY_LIMIT_S = 10.0


async def _publish(cluster: Cluster, base: str, prompt: str) -> tuple[int, Any]:
    doc = {"id": "paused", "set": {"system_prompt": prompt}}
    headers = {"Authorization": f"Bearer {ADMIN}"}
    try:
        async with cluster.http.post(
            base + "/v1/policies", json=doc, headers=headers, timeout=_timeout(8)
        ) as resp:
            return resp.status, await resp.json()
    except TimeoutError:
        return 0, "no answer within 8 s"


def _timeout(seconds: float) -> Any:
    import aiohttp

    return aiohttp.ClientTimeout(total=seconds)


@pytest.mark.timeout(120)
async def test_publishing_works_within_10_s_of_sigcont_after_a_15_s_pause_and_readyz_was_false(
    own_cluster: Cluster, own_nats: ServerProcess
) -> None:
    env = {"CONTROLPLANE_READINESS_STALL_S": "3"}
    proc: Spawned = await asyncio.to_thread(spawn, own_cluster, "node-p", env=env)
    own_cluster.procs.append(proc.proc)  # type: ignore[arg-type]
    base = proc.base
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    url = base.replace("http://", "ws://") + "/v1/control"
    async with ControlClient(url, token=ADMIN, kind="voice-agent-v1", model="voice-agent") as app:
        pushes = app.pushes()
        status, body = await _publish(own_cluster, base, "before")
        assert status == 201, body
        push = await asyncio.wait_for(anext(pushes), 10)
        assert push.message["session"] == {"system_prompt": "before"}

        os.kill(pid, signal.SIGSTOP)
        paused = time.monotonic()
        states: list[tuple[float, bool, dict[str, Any]]] = []
        try:
            while time.monotonic() - paused < PAUSE_S:
                ok, checks = await ready(own_cluster.http, base)
                states.append((time.monotonic() - paused, ok, checks))
                await asyncio.sleep(0.5)
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed = time.monotonic()
        unready = [t for t, ok, _ in states if not ok]
        assert unready, f"/readyz stayed 200 through a {PAUSE_S:.0f} s pause"
        assert unready[0] < 8.0, states[:20]  # noticed within seconds
        assert not states[-1][1], states[-1]  # still false at the end of the outage
        # by then the client had torn the silent connection down (PINGs unanswered)
        assert states[-1][2]["failing"]["nats"].startswith("NATS disconnected for "), states[-1]

        attempts = []
        while True:
            status, body = await _publish(own_cluster, base, "after")
            attempts.append((round(time.monotonic() - resumed, 1), status))
            if status == 201:
                break
            assert time.monotonic() - resumed < RECOVERY_LIMIT_S, (attempts, proc.log()[-4000:])
            await asyncio.sleep(0.3)
        published_after = time.monotonic() - resumed
        assert published_after < RECOVERY_LIMIT_S, attempts
        push = await asyncio.wait_for(anext(pushes), 10)  # applied and pushed, not only stored
        assert push.message["session"] == {"system_prompt": "after"}
        ready_after = None
        while time.monotonic() - resumed < RECOVERY_LIMIT_S + 5:
            if (await ready(own_cluster.http, base))[0]:
                ready_after = time.monotonic() - resumed
                break
            await asyncio.sleep(0.2)
        assert ready_after is not None, (await ready(own_cluster.http, base), proc.log()[-3000:])
    print(f"\npaused {PAUSE_S:.0f} s: /readyz false from {unready[0]:.1f} s on; after SIGCONT "
          f"a publish succeeded at {published_after:.1f} s ({attempts}), /readyz 200 at "
          f"{ready_after:.1f} s")  # fmt: skip
    proc.stop()
