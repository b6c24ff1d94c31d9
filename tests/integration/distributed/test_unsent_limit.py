"""A control-channel app that keeps sending but never reads: the server's unsent bytes for its
connection are capped (``controlplane.edges.unsent.MAX_UNSENT_BYTES``), counted here byte by
byte from the server's own transport, and past the cap the connection is closed with 1008 and
a reason naming the limit. Nothing waits for that app meanwhile: its handler keeps reading
(answers are written without waiting for it), and 100 other apps get a version at once.

Before: each answer went through aiohttp's ``send_str``, which waits for the app once 64 KiB
of answers are unsent: the connection's handler stopped reading the app's frames, the app's
own sends blocked, and the connection stayed open, holding its buffers, for good.
"""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
import websockets

from controlplane.edges.control_channel import ControlTransport
from controlplane.edges.unsent import MAX_UNSENT_BYTES, UNSENT_CLOSE, close_frame
from tests.integration.distributed.conftest import Cluster
from tests.integration.service.conftest import ADMIN, eventually
from tests.integration.service.fleet import Fleet

CLOSE_BYTES = len(close_frame(UNSENT_CLOSE, "x" * 123))


@pytest.mark.timeout(120)
async def test_an_app_that_sends_without_reading_is_closed_at_the_unsent_limit(
    cluster: Cluster,
) -> None:
    a = await cluster.start("node-a", rollout_sync_interval_s=300.0)
    fleet = Fleet(a.ws_base)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    sock = socket.socket()  # its receive buffer small from the start (not shrunk later)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.connect(("127.0.0.1", a.port))
    sock.setblocking(False)
    ws = await websockets.connect(a.ws_base + "/v1/control", compression=None, sock=sock,
                                  additional_headers=auth, max_queue=None)  # fmt: skip
    try:
        await ws.send(json.dumps({"type": "register", "kind": "voice-agent-v1",
                                  "model": "voice-agent", "labels": {"who": "deaf"}}))  # fmt: skip
        sid = json.loads(await ws.recv())["session_id"]
        ls = a.service.engine.live[sid]
        assert isinstance(ls.transport, ControlTransport)
        server, unsent = ls.transport._transport, ls.transport.unsent
        assert server is not None and unsent is not None
        # small kernel buffers on the way to the app: the server's answers pile up in its
        # own transport's buffer, where they are counted
        server.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
        ws.transport.pause_reading()  # the app never reads again
        apps = await fleet.open_apps(100, "ack", labels={"who": "fleet"})

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        peak = sent = 0
        while not unsent.closed:
            assert loop.time() < deadline, ("never closed", server.get_write_buffer_size())
            # each answered with an `error` frame (~100 bytes) the app does not read
            await asyncio.wait_for(ws.send("not json"), 10)  # its handler keeps reading
            sent += 1
            if sent % 50 == 0:
                await asyncio.sleep(0.001)  # the server reads them, answers each
            peak = max(peak, server.get_write_buffer_size())
            if sent == 2000:  # meanwhile the fleet gets a version at once
                await a.publish({"id": "fleet", "match": {"labels": {"who": "fleet"}},
                                 "set": {"system_prompt": "everyone else"}})  # fmt: skip
                version = a.service.engine.live[apps[0].session_id].push.desired_version
                got = await asyncio.gather(*(app.got(version, 10.0) for app in apps))
                assert all(got), got.count(False)
        assert peak <= MAX_UNSENT_BYTES + CLOSE_BYTES, peak
        assert peak > MAX_UNSENT_BYTES - 1024  # it did fill up to the cap

        ws.transport.resume_reading()  # the app reads what was sent, then the close
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == UNSENT_CLOSE
        assert ws.close_reason is not None and str(MAX_UNSENT_BYTES) in ws.close_reason
        await eventually(lambda: sid not in a.service.engine.live, timeout=10)  # it ended
        assert (await a.call("GET", "/healthz", token=None))["status"] == "ok"
    finally:
        await ws.close()
        await fleet.close()
