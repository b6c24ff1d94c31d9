"""redis-server paused (SIGSTOP: its sockets stay open, nothing answers, no reset), then
resumed: a replica must not wait on it forever. Its registry commands time out (redis-py's
socket timeout), a session that tries to register is refused ``backend_unavailable`` with
the reason, ``/readyz`` says the registry is down, and all of it recovers after SIGCONT with
the sessions registered before still listed. (``test_failures`` covers a stopped Redis: a
refused connection fails at once; a silent one only by a timeout.)"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest

from controlplane.edges.client import ControlError
from tests.integration.distributed.conftest import Cluster
from tests.integration.service.conftest import eventually
from tests.support.servers import ServerProcess


@pytest.mark.timeout(120)
async def test_a_paused_redis_fails_registrations_within_seconds_and_readyz_says_so(
    own_cluster: Cluster, own_redis: ServerProcess
) -> None:
    a = await own_cluster.start("node-a")
    app = a.client(labels={"tenant": "acme"})
    await app.__aenter__()
    assert own_redis.proc is not None
    os.kill(own_redis.proc.pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        with pytest.raises(ControlError) as refused:
            await asyncio.wait_for(a.client().__aenter__(), 30)
        assert time.monotonic() - began < 15, time.monotonic() - began
        assert refused.value.code == "backend_unavailable"
        assert "redis registry" in str(refused.value)

        async def unready() -> dict[str, Any] | None:
            body = await a.call("GET", "/readyz", token=None)
            return None if body["ready"] else body

        body = await eventually(unready, timeout=20)
        assert body["checks"]["registry"] is False
        listed = await asyncio.wait_for(a.call("GET", "/v1/sessions", expect=503), 15)
        assert listed["error"]["code"] == "backend_unavailable"
    finally:
        os.kill(own_redis.proc.pid, signal.SIGCONT)

    async def ready() -> bool:
        return bool((await a.call("GET", "/readyz", token=None))["ready"])

    await eventually(ready, timeout=15)
    listed = await a.call("GET", "/v1/sessions", expect=200)
    assert [s["id"] for s in listed["items"]] == [app.session_id]
    later = a.client()
    await later.__aenter__()  # registrations work again
    await later.close()
    await app.close()
