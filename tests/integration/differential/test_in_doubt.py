"""A gateway push whose write timed out after its frame was handed to the socket is IN DOUBT,
never ``rejected`` (docs/audit.md, "Writes given up"), through real sockets: the gateway's
upstream socket congested by a Voice Agent upstream that reads slowly (emulator latency, a
small kernel send buffer), a push frame larger than aiohttp's drain threshold, so its
``send_str`` writes it and then waits for the drain past ``send_timeout_s``.

Before the fix the record said ``rejected`` "send timed out" and re-sent the push as a new
version, while the upstream applied the first frame once it read it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets

from controlplane.config import Settings
from controlplane.edges.gateway import UpstreamTransport
from emulator.server import build_app as build_emulator
from emulator.settings import EmulatorSettings
from tests.integration.differential.actors import GatewayStreaming
from tests.integration.service.conftest import (
    TOKENS,
    ControlPlaneUnderTest,
    Emulator,
    _serve,
    eventually,
    serving,
)
from tests.integration.service.fleet import Fleet

SEND_TIMEOUT_S = 0.3
PAD = "A" * 900_000  # one padded Voice Agent frame: far larger than CONGESTED_BYTES
# a push frame over aiohttp's drain threshold (256 KiB of output; an astral character is 12
# bytes of JSON): its send_str writes it, then waits for the drain
BIG = "\U0001f600" * 19_990
TERMS = [f"{i:02d}" + "\U0001f600" * 48 for i in range(100)]


@pytest.fixture
async def slow(tmp_path: Path) -> AsyncIterator[tuple[ControlPlaneUnderTest, Emulator]]:
    """A control plane giving up a worker's write after SEND_TIMEOUT_S, on an emulator whose
    sockets have a small kernel receive buffer (set on the listening socket, inherited by
    the accepted ones): a slow upstream's window, not megabytes of loopback autotuning."""
    em_runner, em_port = await _serve(build_emulator(EmulatorSettings(pacing_tolerance_ms=5e3)))
    for site in em_runner.sites:
        server = site._server  # type: ignore[attr-defined]
        for sock in server.sockets:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    settings = Settings(
        listen="127.0.0.1:0", data_dir=tmp_path / "data", node_id="node-a", tokens=TOKENS,
        upstream_streaming_url=f"ws://127.0.0.1:{em_port}/v3/ws",
        upstream_agent_url=f"ws://127.0.0.1:{em_port}/v1/ws",
        ack_timeout_s=10.0, send_timeout_s=SEND_TIMEOUT_S, shutdown_grace_s=0.5,
    )  # fmt: skip
    try:
        async with serving(settings) as cp, aiohttp.ClientSession() as http:
            yield cp, Emulator(em_port, http)
    finally:
        await em_runner.cleanup()


async def _entries(cp: ControlPlaneUnderTest, sid: str, **match: Any) -> list[dict[str, Any]]:
    return [e for e in await cp.log(sid) if all(e.get(k) == v for k, v in match.items())]


@pytest.mark.timeout(90)
async def test_a_timed_out_write_already_handed_to_the_socket_is_in_doubt_not_rejected(
    slow: tuple[ControlPlaneUnderTest, Emulator],
) -> None:
    (cp, emulator), fleet = slow, Fleet(slow[0].ws_base)
    loop = asyncio.get_running_loop()
    agent = await fleet.agent("team=slow")
    sid = cp.live_by_upstream(agent.upstream_id)
    ls = cp.service.engine.live[sid]
    assert isinstance(ls.transport, UpstreamTransport)
    ls.transport.ws.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024
    )

    async def drain_client() -> None:  # the client keeps reading its answers
        with contextlib.suppress(websockets.ConnectionClosed):
            async for _ in agent.ws:
                pass

    async def flood(stop: asyncio.Event) -> None:
        bad_audio = json.dumps({"type": "input.audio", "audio": "!" + PAD})  # invalid_audio
        for _ in range(100):  # bounded
            if stop.is_set():
                return
            with contextlib.suppress(websockets.ConnectionClosed):  # (the gateway may
                await agent.ws.send(bad_audio)  # drop a client it cannot read fast enough)

    async def attempt(n: int) -> tuple[int, str]:
        """Publish while the upstream socket is congested; the push's version and prompt."""
        prompt = f"{n} {BIG}"
        stop = asyncio.Event()
        await emulator.faults(agent.upstream_id, {"latency_ms": 1000})  # reads slowly
        flooding = loop.create_task(flood(stop), name="reader-flood")
        try:
            await eventually(ls.transport.congested, timeout=20, interval=0.002)
            await cp.publish({"id": "tone", "match": {"labels": {"team": ["slow"]}},
                              "set": {"system_prompt": prompt, "keyterms": TERMS}})  # fmt: skip
            version = ls.push.desired_version
            await asyncio.sleep(SEND_TIMEOUT_S * 3)  # a worker's write gives up meanwhile
        finally:
            stop.set()
            await flooding
        await emulator.faults(agent.upstream_id, {"latency_ms": 0})
        return version, prompt

    reader = loop.create_task(drain_client(), name="reader-slow")
    try:
        for n in range(6):  # the fan-out may find the socket drained for an instant: again
            version, prompt = await attempt(n)
            gave_up = [e for e in await _entries(cp, sid, version=version)
                       if "send timed out" in str(e.get("error"))]  # fmt: skip
            if gave_up:
                break
        assert gave_up, (
            "no worker's write timed out in 6 attempts",
            [(e["version"], e["status"], e["error"]) for e in await cp.log(sid)],
        )
        # the upstream reads the frame it was handed and applies it
        await eventually(lambda: _runs(emulator, agent.upstream_id, prompt), timeout=30)
        answered = await eventually(
            lambda: _entries(cp, sid, version=version, status="acked"), timeout=15
        )
        mine = await _entries(cp, sid, version=version)
        assert [e["status"] for e in mine] == ["sent", "unverified", "acked"], mine
        assert "handed to the socket" in mine[1]["error"]
        assert answered[0]["error"].startswith("answered after")  # recorded late
        # never re-sent: the upstream got the frame once
        resent = [e for e in await _entries(cp, sid, status="sent", cause="policy")
                  if e["version"] > version]  # fmt: skip
        assert resent == []
        shown = await cp.session(sid)  # (the session may have ended: the client flooded)
        assert shown["running_config"]["system_prompt"] == prompt
        went = [m for m in await emulator.updates(agent.upstream_id, "session.update")
                if m["session"].get("system_prompt") == prompt]  # fmt: skip
        assert len(went) == 1  # the upstream got the frame once
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await fleet.close()


async def _runs(emulator: Emulator, upstream_id: str, prompt: str) -> bool:
    config = (await emulator.session(upstream_id))["config"]
    return bool(config.get("system_prompt") == prompt)


async def test_a_streaming_doubt_shows_in_the_session_view_until_an_update_sets_the_field(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """An unpredicted Streaming v3 ``Warning`` (the upstream dropped the client's update):
    the session view names the fields in doubt and is not ``synced`` (was: ``synced``,
    running_config claiming the dropped value, nothing said); the client's next update
    setting the field ends the doubt, the view then equal to what the upstream runs."""
    stream = GatewayStreaming("s0", "streaming-v3", "universal-3-5-pro", "gateway")
    try:
        await stream.open(cp.ws_base, "tier=gold")
        sid = stream.session_id = cp.live_by_upstream(stream.upstream_id)
        shown = await cp.session(sid)
        assert (shown["state"], shown["in_doubt"]) == ("synced", [])
        refuse = {"reject_next_update": {"style": "warning", "message": "not now"}}
        await emulator.faults(stream.upstream_id, refuse)
        await stream.update({"max_turn_silence": 2200})
        await eventually(lambda: _doubted(cp, sid), timeout=5)
        shown = await cp.session(sid)
        assert (shown["state"], shown["in_doubt"]) == ("unverified", ["max_turn_silence_ms"])
        truth = (await emulator.session(stream.upstream_id))["config"]
        assert truth["max_turn_silence"] != 2200  # dropped: the record says it may be wrong
        [doubt] = [e for e in await cp.log(sid) if e["cause"] == "upstream"]
        assert doubt["error"].endswith("in doubt: max_turn_silence_ms"), doubt
        assert (await _config_at_now(cp, sid))["in_doubt"] is True  # (audit at says it too)
        await stream.update({"max_turn_silence": 2300})  # (the fault is spent: applied)
        await eventually(lambda: _settled(cp, sid), timeout=5)
        shown = await cp.session(sid)
        truth = (await emulator.session(stream.upstream_id))["config"]
        assert truth["max_turn_silence"] == 2300
        assert shown["running_config"]["max_turn_silence_ms"] == 2300
        assert (shown["state"], shown["in_doubt"]) == ("synced", [])
        answer = await _config_at_now(cp, sid)
        assert (answer["in_doubt"], answer["doubts"]) == (False, []), answer
    finally:
        await stream.close()


async def _config_at_now(cp: ControlPlaneUnderTest, sid: str) -> dict[str, Any]:
    path = f"/v1/sessions/{sid}/config-at?at={time.time()!r}"
    return dict(await cp.call("GET", path, expect=200))


async def _doubted(cp: ControlPlaneUnderTest, sid: str) -> bool:
    return any(e["cause"] == "upstream" for e in await cp.log(sid))


async def _settled(cp: ControlPlaneUnderTest, sid: str) -> bool:
    return (await cp.session(sid))["in_doubt"] == []


async def test_an_echo_two_updates_expect_is_not_pinned_on_the_later_one(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """Voice Agent, upstream slower than the acknowledgement timeout: the client's
    ``conversation.message`` draws a ``param``-less ``session.error`` while our push is
    outstanding (it may be the push's answer: the push ends ``unverified``, not owed), then
    the client's own ``session.update`` asking the same value goes. The push's late echo
    matches both: by order it is the push's if the error was the message's, the client's if
    the error was the push's. The record says so (the client's update ``acked``: what it asked
    runs either way; its entry says whose answer it is cannot be told), and the second echo
    is the push's late answer, not a second acknowledgement of the client's update (was:
    the client's ``acked`` twice, the push ``unverified`` for good though applied)."""
    fleet = Fleet(cp.ws_base)
    try:
        agent = await fleet.agent("team=twin")
        sid = cp.live_by_upstream(agent.upstream_id)
        await emulator.faults(agent.upstream_id, {"latency_ms": 700})  # 0.7 s a message
        await agent.ws.send(json.dumps({"type": "conversation.message", "role": "bogus",
                                        "content": "x"}))  # fmt: skip
        await asyncio.sleep(0.05)
        await cp.publish({"id": "twin", "match": {"labels": {"team": ["twin"]}},
                          "set": {"system_prompt": "Be twin."}})  # fmt: skip
        await asyncio.sleep(0.2)
        await agent.ws.send(json.dumps({"type": "session.update",
                                        "session": {"system_prompt": "Be twin."}}))  # fmt: skip

        async def client_answers() -> list[dict[str, Any]]:
            return [e for e in await cp.log(sid)
                    if e["cause"] == "client" and e["status"] != "sent"]  # fmt: skip

        answers = await eventually(client_answers, timeout=10)
        await asyncio.sleep(1.5)  # the client update's own echo comes
        answers = await client_answers()
        # the first echo: what the client asked runs, whose answer it is is said unknown
        assert [a["status"] for a in answers] == ["acked"], answers  # (was: acked twice)
        assert "cannot be told" in answers[0]["error"], answers[0]
        # the second echo proves the first was our push's (answered in order): late
        pushes = [(e["status"], e["error"] or "") for e in await cp.log(sid)
                  if e["cause"] == "policy" and e["status"] != "sent"]  # fmt: skip
        assert [s for s, _ in pushes] == ["unverified", "acked"], pushes
        assert pushes[1][1].startswith("answered after"), pushes
        upstream = await emulator.session(agent.upstream_id)
        assert upstream["config"]["system_prompt"] == "Be twin."
        assert (await cp.session(sid))["running_config"]["system_prompt"] == "Be twin."
    finally:
        await fleet.close()


async def test_rollout_status_counts_an_unconfirmed_voice_agent_push_in_doubt(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """A Voice Agent push no answer confirmed in time is ``unverified`` AND ``in_doubt`` in
    the rollout rows (never read as rolled out; a Streaming v3 write is ``unverified`` only);
    its late answer moves it to ``acknowledged``."""
    fleet = Fleet(cp.ws_base)
    try:
        agent = await fleet.agent("team=doubt")
        await emulator.faults(agent.upstream_id, {"latency_ms": 1600})  # past the 1 s timeout
        await cp.publish({"id": "slow", "match": {"labels": {"team": ["doubt"]}},
                          "set": {"system_prompt": "Be slow."}})  # fmt: skip

        async def totals() -> dict[str, int]:
            body = await cp.call("GET", "/v1/policies/slow/rollout", expect=200)
            return dict(body["totals"])

        async def timed_out() -> bool:
            return (await totals())["unverified"] == 1

        await eventually(timed_out, timeout=5)
        now = await totals()
        assert (now["unverified"], now["in_doubt"], now["acknowledged"]) == (1, 1, 0), now

        async def answered() -> bool:
            return (await totals())["acknowledged"] == 1

        await eventually(answered, timeout=5)  # the late answer
        assert (await totals())["in_doubt"] == 0
    finally:
        await fleet.close()
