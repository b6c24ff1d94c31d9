"""Issue 4 acceptance, Streaming v3 through the gateway against the emulator."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import websockets
from assemblyai.streaming.v3 import (
    AsyncRealTimeTranscriber,
    RealTimeEvents,
    RealTimeParameters,
    RealTimeTranscriberOptions,
)

from controlplane import cli
from tests.integration.service.audio import silence_chunk, tone_chunk
from tests.integration.service.conftest import ADMIN, ControlPlaneUnderTest, Emulator, eventually

CONNECT = "/v3/ws?sample_rate=16000&speech_model=universal-3-5-pro"


def run_cli(cp: ControlPlaneUnderTest, *args: str) -> int:
    """``controlplane <group> <command> --url … --token … <rest>``."""
    return cli.main([*args[:2], "--url", cp.base, "--token", ADMIN, *args[2:]])


async def test_sdk_session_gets_exact_delta_logged_and_reverted_on_retire(
    cp: ControlPlaneUnderTest, emulator: Emulator, tmp_path: Path, capsys: Any
) -> None:
    client = AsyncRealTimeTranscriber(
        RealTimeTranscriberOptions(api_key="test-key", api_host=cp.ws_base)
    )
    begins: list[Any] = []
    client.on(RealTimeEvents.Begin, lambda _c, event: begins.append(event))
    await client.connect(
        RealTimeParameters(sample_rate=16000, speech_model="universal-3-5-pro",
                           keyterms_prompt=["alpha"])
    )  # fmt: skip
    try:
        await eventually(lambda: begins)
        upstream_id = begins[0].id
        session_id = cp.live_by_upstream(upstream_id)

        policy = tmp_path / "eu.yaml"
        policy.write_text(
            "id: eu-disclosure\n"
            "match: {kind: [streaming-v3]}\n"
            "set: {prompt: 'This call is recorded.', max_turn_silence_ms: 2500}\n"
        )
        assert await asyncio.to_thread(run_cli, cp, "policy", "apply", "-f", str(policy)) == 0

        async def one_update() -> list[Any]:
            return await emulator.updates(upstream_id)

        updates = await eventually(one_update)
        assert updates == [
            {"type": "UpdateConfiguration", "prompt": "This call is recorded.",
             "max_turn_silence": 2500}
        ]  # fmt: skip

        capsys.readouterr()
        assert await asyncio.to_thread(run_cli, cp, "sessions", "log", "--json", session_id) == 0
        printed = json.loads(capsys.readouterr().out)
        entries = printed["items"] if isinstance(printed, dict) else printed
        pushed = [e for e in entries if e["cause"] == "policy"]
        assert len(pushed) == 1
        assert pushed[0]["status"] == "sent"  # streaming v3 is never "acked"
        assert pushed[0]["delta"] == {"prompt": "This call is recorded.",
                                      "max_turn_silence_ms": 2500}  # fmt: skip
        assert pushed[0]["policies"] == [await cp.ref("eu-disclosure", 1)]

        assert await asyncio.to_thread(run_cli, cp, "policy", "retire", "eu-disclosure") == 0

        async def two_updates() -> list[Any]:
            found = await emulator.updates(upstream_id)
            return found if len(found) == 2 else []

        updates = await eventually(two_updates)
        # the client never set prompt or max_turn_silence: both return to the model default
        assert updates[1] == {"type": "UpdateConfiguration", "prompt": "",
                              "max_turn_silence": 1280}  # fmt: skip
        emu = await emulator.session(upstream_id)
        assert emu["config"]["keyterms_prompt"] == ["alpha"]
        entries = await cp.log(session_id)
        assert entries[-1]["cause"] == "retire"
        assert entries[-1]["delta"] == {"prompt": None, "max_turn_silence_ms": None}
    finally:
        await client.disconnect(terminate=True)


async def test_late_joiner_starts_on_effective_config_and_locked_field_is_stripped(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    await cp.publish({
        "id": "eu-lock", "match": {"kind": ["streaming-v3"], "labels": {"region": "eu"}},
        "set": {"prompt": "Disclose.", "keyterms": ["acme"]}, "lock": ["prompt"],
    })  # fmt: skip
    headers = {"Authorization": "test-key", "X-Session-Labels": "region=eu,tenant=acme"}
    async with websockets.connect(cp.ws_base + CONNECT, additional_headers=headers) as ws:
        begin = json.loads(await ws.recv())
        assert begin["type"] == "Begin"
        upstream_id = begin["id"]
        emu = await emulator.session(upstream_id)
        assert emu["config"]["prompt"] == "Disclose."
        assert emu["config"]["keyterms_prompt"] == ["acme"]
        session_id = cp.live_by_upstream(upstream_id)
        entries = await cp.log(session_id)
        assert entries[0]["cause"] == "connect"
        assert entries[0]["delta"] == {"prompt": "Disclose.", "keyterms": ["acme"]}
        assert "X-Session-Labels" not in json.dumps(emu)

        await ws.send(json.dumps(
            {"type": "UpdateConfiguration", "prompt": "my own", "max_turn_silence": 3000}
        ))  # fmt: skip

        async def forwarded() -> list[Any]:
            return await emulator.updates(upstream_id)

        assert await eventually(forwarded) == [
            {"type": "UpdateConfiguration", "max_turn_silence": 3000}
        ]
        entries = await cp.log(session_id)
        rejected = [e for e in entries if e["status"] == "rejected"]
        assert len(rejected) == 1
        assert rejected[0]["cause"] == "client"
        assert rejected[0]["delta"] == {"prompt": "my own"}
        assert "prompt locked by policy eu-lock v1" in rejected[0]["error"]
        session = await cp.session(session_id)
        assert session["effective_config"]["prompt"] == "Disclose."
        assert session["labels"] == {"region": "eu", "tenant": "acme"}


async def test_next_turn_policy_waits_for_the_turn_boundary(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    async with websockets.connect(
        cp.ws_base + CONNECT, additional_headers={"Authorization": "test-key"}
    ) as ws:
        begin = json.loads(await ws.recv())
        upstream_id = begin["id"]
        await cp.publish({
            "id": "calm", "match": {"kind": ["streaming-v3"]},
            "set": {"max_turn_silence_ms": 2000}, "apply": "next_turn", "apply_deadline_s": 30,
        })  # fmt: skip
        await asyncio.sleep(0.3)
        assert await emulator.updates(upstream_id) == []  # held until the turn ends

        for _ in range(16):
            await ws.send(tone_chunk())
        for _ in range(2):
            await ws.send(silence_chunk())
        await ws.send(json.dumps({"type": "ForceEndpoint"}))
        saw_final = False
        while not saw_final:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
            saw_final = msg.get("type") == "Turn" and msg.get("end_of_turn") is True

        async def released() -> list[Any]:
            return await emulator.updates(upstream_id)

        assert await eventually(released) == [
            {"type": "UpdateConfiguration", "max_turn_silence": 2000}
        ]


async def test_more_than_a_hundred_gateway_sessions_reach_the_upstream(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """aiohttp's default connector pools 100 connections: session 101 used to get a 502."""
    sessions = 120

    async def one(stack: list[Any]) -> str:
        ws = await websockets.connect(
            cp.ws_base + CONNECT, additional_headers={"Authorization": "test-key"}
        )
        stack.append(ws)
        begin = json.loads(await asyncio.wait_for(ws.recv(), 8))
        assert begin["type"] == "Begin"
        return str(begin["id"])

    opened: list[Any] = []
    try:
        ids = await asyncio.gather(*(one(opened) for _ in range(sessions)))
        assert len(set(ids)) == sessions
        assert len(cp.service.engine.live) == sessions
    finally:
        await asyncio.gather(*(ws.close() for ws in opened))
