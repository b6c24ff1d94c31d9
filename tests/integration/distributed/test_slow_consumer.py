"""A control-channel app that stops reading its socket while the fleet gets pushes.

One app never reads again (its socket's buffers fill; a small kernel send buffer on the
replica's side of that socket gets there without megabytes of loopback buffering first). The
other sessions must keep getting every version at once (a fan-out never waits for one
socket), the slow session's unsent bytes stay bounded (its pushes coalesce behind one in
flight: the latest version wins), and once it reads again it gets the latest version.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from controlplane.edges.control_channel import ControlTransport
from controlplane.push.live import CONGESTED_BYTES, LiveSession
from tests.integration.distributed.conftest import Cluster, Replica
from tests.integration.service.conftest import eventually
from tests.integration.service.fleet import App, Fleet

N = 1000


class _Raw:
    """The server side of an app's socket: the connection's transport and protocol."""

    def __init__(self, transport: object) -> None:
        assert isinstance(transport, ControlTransport)
        assert transport._transport is not None and transport._protocol is not None
        self.transport = transport._transport
        self.protocol = transport._protocol


async def _congested(a: Replica, fleet: Fleet) -> tuple[App, LiveSession, str]:
    """An app that stops reading (small kernel buffers on both sides) while versions of a
    ~19,000-character prompt are published to it alone, acknowledged blindly until its socket
    is congested and a worker waits to write the last one: the app, its live session and the
    last prompt published."""
    slow = await fleet.app("silent", labels={"who": "slow"})
    slow_ls = a.service.engine.live[slow.session_id]
    raw = _Raw(slow_ls.transport)
    raw.transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024
    )
    ws = slow.client._ws
    assert slow.task is not None and ws is not None
    slow.task.cancel()  # the app stops reading
    ws.transport.pause_reading()
    ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    big = "x" * 19_000
    prompt = ""
    for n in range(40):  # acknowledged blindly until the socket is congested
        prompt = f"{n} {big}"
        await a.publish({"id": "slow-only", "set": {"system_prompt": prompt}})
        await eventually(lambda: slow_ls.push.in_flight is not None or slow_ls.worker)
        if slow_ls.worker is not None:
            break
        in_flight = slow_ls.push.in_flight
        assert in_flight is not None
        await slow.client.applied(in_flight.version)
        await eventually(lambda: slow_ls.push.in_flight is None or slow_ls.worker)
    assert slow_ls.worker is not None, raw.transport.get_write_buffer_size()
    return slow, slow_ls, prompt


@pytest.mark.timeout(240)
async def test_an_app_that_never_reads_stalls_no_other_session_and_stays_bounded(
    cluster: Cluster,
) -> None:
    # (send_timeout_s: the slow app's worker waits for it all test long; at the default 5 s,
    # under load, 14 rounds outlasted it: the push timed out, no worker left to assert on)
    a = await cluster.start("node-a", rollout_sync_interval_s=300.0, send_timeout_s=120.0)
    fleet = Fleet(a.ws_base)
    try:
        slow = await fleet.app("silent", labels={"who": "slow"})
        slow_ls = a.service.engine.live[slow.session_id]
        assert isinstance(slow_ls.transport, ControlTransport)
        raw = _Raw(slow_ls.transport)
        server_sock = raw.transport.get_extra_info("socket")
        server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
        assert slow.task is not None
        slow.task.cancel()  # the app stops reading: nothing takes frames off its socket
        ws = slow.client._ws
        assert ws is not None
        ws.transport.pause_reading()
        client_sock = ws.transport.get_extra_info("socket")
        client_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)

        apps: list[App] = []
        for _ in range(N // 100):
            apps += await fleet.open_apps(100, "ack", labels={"who": "fleet"})

        # fill the slow socket into the window where the writer is paused but the session is
        # not "congested" yet (asyncio's 64 KiB high-water mark, CONGESTED_BYTES 256 KiB)
        big = "x" * 19_000
        for n in range(60):
            await a.publish({"id": "slow-only", "match": {"labels": {"who": "slow"}},
                             "set": {"system_prompt": f"{n} {big}"}})  # fmt: skip
            await eventually(lambda: slow_ls.push.in_flight is not None)
            in_flight = slow_ls.push.in_flight
            assert in_flight is not None
            # the app still writes: it acknowledges blindly (one push in flight per session)
            await slow.client.applied(in_flight.version)
            await eventually(lambda: slow_ls.push.in_flight is None)
            if raw.transport.get_write_buffer_size() > 80 * 1024:
                break
        assert raw.protocol.writing_paused and slow_ls.worker is None

        for round_ in range(14):  # past CONGESTED_BYTES: then its own worker waits
            prompt = f"round {round_} " + "y" * 17_000  # > aiohttp's 16 KiB write limit
            await a.publish({"id": "everyone", "set": {"system_prompt": prompt}})
            version = a.service.engine.live[apps[0].session_id].push.desired_version
            got = await asyncio.gather(*(app.got(version, 10.0) for app in apps))
            if slow_ls.worker is None and slow_ls.push.in_flight is not None:
                await slow.client.applied(slow_ls.push.in_flight.version)  # written: acked
            assert all(got), f"round {round_}: {got.count(False)} of {N} never got v{version}"
            buffered = raw.transport.get_write_buffer_size()
            assert buffered < CONGESTED_BYTES + 64 * 1024  # bounded: one frame past the mark

        assert slow_ls.worker is not None  # its own task waits for the app, nobody else
        slow.task = asyncio.get_running_loop().create_task(slow.run(), name="fleet-app")
        ws.transport.resume_reading()  # the app reads again: its socket drains
        await eventually(lambda: raw.transport.get_write_buffer_size() == 0, timeout=30)
        await eventually(lambda: slow_ls.worker is None, timeout=30)
    finally:
        await fleet.close()


@pytest.mark.timeout(120)
async def test_a_push_waiting_for_a_congested_socket_ends_in_one_recorded_state(
    cluster: Cluster,
) -> None:
    """The worker's push waits for the app's socket to drain, longer than the acknowledgement
    timeout and then the send timeout: it was never written, so it ends ``rejected`` "send
    timed out" — once. Its acknowledgement timer used to start before the wait: the log said
    ``unverified`` "no acknowledgement" first, then ``rejected``: two ends for one push."""
    a = await cluster.start("node-a", ack_timeout_s=0.5, send_timeout_s=2.0)
    fleet = Fleet(a.ws_base)
    try:
        slow, slow_ls, _ = await _congested(a, fleet)
        await eventually(lambda: slow_ls.worker is None, timeout=10)  # send timed out
        entries = await a.log(str(slow.session_id))
        ends: dict[int, list[str]] = {}
        for e in entries:
            if e["status"] != "sent":
                ends.setdefault(e["version"], []).append(f"{e['status']} {e.get('error')}")
        timed_out = [
            v for v, statuses in ends.items() if any("send timed out" in s for s in statuses)
        ]
        assert timed_out, ends
        for version in timed_out:
            assert len(ends[version]) == 1, (version, ends[version])
    finally:
        await fleet.close()


@pytest.mark.timeout(120)
async def test_a_push_that_timed_out_on_a_congested_socket_is_sent_once_the_app_reads_again(
    cluster: Cluster,
) -> None:
    """The push that ended ``rejected`` "send timed out" never reached the app, and no other
    change comes: once the app reads again (its socket drains) it gets the version it is
    owed — the config of the last publish — without another publish, recorded once: one
    ``sent`` and one ending per version. It used to wait for the next policy change."""
    a = await cluster.start("node-a", ack_timeout_s=10.0, send_timeout_s=2.0)
    fleet = Fleet(a.ws_base)
    try:
        slow, slow_ls, prompt = await _congested(a, fleet)
        ws = slow.client._ws
        assert ws is not None
        timed_out = slow_ls.push.sent_version  # the worker's push, waiting for the app
        await eventually(lambda: slow_ls.worker is None, timeout=10)  # send timed out
        assert slow_ls.push.base.get("system_prompt") != prompt  # the app does not run it

        slow.mode = "hold"  # the app reads again (acknowledging what it got earlier is done)
        slow.task = asyncio.get_running_loop().create_task(slow.run(), name="fleet-app")
        ws.transport.resume_reading()
        deadline = time.monotonic() + 20
        owed = None
        while owed is None and (left := deadline - time.monotonic()) > 0:
            push = await slow.next_push(left)
            assert push is not None, "the app never got the version it is owed"
            if push.version > timed_out:
                owed = push
        assert owed is not None
        assert owed.message["session"] == {"system_prompt": prompt}
        await slow.client.applied(owed.version)
        await eventually(lambda: slow_ls.push.acked_version == owed.version, timeout=10)
        assert slow_ls.push.base.get("system_prompt") == prompt

        entries = await a.log(str(slow.session_id))
        ends: dict[int, list[str]] = {}
        sent: dict[int, int] = {}
        for e in entries:
            if e["status"] == "sent":
                sent[e["version"]] = sent.get(e["version"], 0) + 1
            else:
                ends.setdefault(e["version"], []).append(f"{e['status']} {e.get('error')}")
        assert ends[timed_out] == ["rejected send timed out"], ends[timed_out]
        assert ends[owed.version] == ["acked None"], entries[-3:]
        assert all(n == 1 for n in sent.values()) and set(sent) - {1} <= set(ends), (sent, ends)
        assert max(e["version"] for e in entries) == owed.version  # nothing more was sent
    finally:
        await fleet.close()
