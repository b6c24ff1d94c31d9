"""``NatsConnection`` against a real nats-server paused with SIGSTOP (issue #19 item 2), one
guard at a time: the late-PONG patch (a flush that timed out during the pause must not kill
the read loop when its PONG arrives after SIGCONT), and the short PING interval (a silent
server is torn down and reconnected to without waiting minutes)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import nats.errors
import pytest

from controlplane.cluster.nats_connection import NatsConnection
from controlplane.config import Settings
from tests.support.servers import ServerProcess


@pytest.mark.timeout(60)
async def test_a_pong_arriving_after_its_flush_timed_out_leaves_the_connection_working(
    own_nats: ServerProcess, tmp_path: object
) -> None:
    # PINGs every 10 minutes: only the patch can keep this connection alive
    conn = NatsConnection(Settings(nats_url=own_nats.url, nats_ping_interval_s=600),
                          name="pong-test")  # fmt: skip
    await conn.connect()
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    try:
        os.kill(pid, signal.SIGSTOP)
        await asyncio.sleep(0.3)  # the stop takes effect
        try:
            with pytest.raises(nats.errors.TimeoutError):
                await conn.client.flush(timeout=1)  # its PONG comes only after SIGCONT
        finally:
            os.kill(pid, signal.SIGCONT)
        # the late PONG arrives now; the read loop must survive it
        await conn.client.flush(timeout=3)
        reply = await conn.client.request("$JS.API.INFO", b"", timeout=3)
        assert b"memory" in reply.data
        assert conn.connected
    finally:
        await conn.close()


@pytest.mark.timeout(60)
async def test_a_silent_server_is_torn_down_within_seconds_and_reconnected_after(
    own_nats: ServerProcess,
) -> None:
    conn = NatsConnection(Settings(nats_url=own_nats.url, nats_ping_interval_s=0.5),
                          name="ping-test")  # fmt: skip
    await conn.connect()
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    try:
        os.kill(pid, signal.SIGSTOP)
        await asyncio.sleep(0.3)  # the stop takes effect
        paused = time.monotonic()
        try:
            while conn.connected and time.monotonic() - paused < 10:
                await asyncio.sleep(0.1)
            noticed = time.monotonic() - paused
            assert not conn.connected, "a paused server still looked connected after 10 s"
            assert noticed < 4.0  # ~3 unanswered PINGs of 0.5 s (plus scheduling)
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed = time.monotonic()
        while not conn.connected and time.monotonic() - resumed < 10:
            await asyncio.sleep(0.1)
        assert conn.connected, "not reconnected within 10 s of SIGCONT"
        await conn.client.flush(timeout=3)
    finally:
        await conn.close()
