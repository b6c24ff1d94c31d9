"""Oversize input is refused with the documented code, changes nothing and leaves the service
healthy: REST bodies over 1 MiB → 413 ``payload_too_large`` (docs/api.md), control-channel
frames over 256 KiB → close 1009, gateway client frames over ``max_client_message_bytes`` →
close 1009 (the upstream leg is closed too and the session ends)."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import aiohttp
import pytest

from tests.integration.security.conftest import ControlPlaneFactory
from tests.integration.service.conftest import ADMIN, ControlPlaneUnderTest, Emulator, eventually

MIB = 1024 * 1024
AUTH = {"Authorization": f"Bearer {ADMIN}"}
CONTROL_MAX = 256 * 1024
REGISTER = {"type": "register", "kind": "voice-agent-v1", "model": "voice-agent"}


def _policy_of(size: int) -> bytes:
    body = json.dumps({"id": "big", "description": "", "set": {"prompt": "x"}}).encode()
    return body.replace(
        b'"description": ""', b'"description": "' + b"d" * (size - len(body)) + b'"'
    )


async def _raw(
    cp: ControlPlaneUnderTest, method: str, path: str, body: bytes, *, chunked: bool
) -> tuple[int, Any]:
    """One request over a plain socket that sends the *whole* body even when the answer comes
    first (aiohttp's client stops sending, and the server then lingers up to 10 s on a body
    that never ends), then reads the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", cp.port)
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: cp\r\nAuthorization: Bearer {ADMIN}\r\n"
        "Content-Type: application/json\r\nConnection: close\r\n"
    )
    if chunked:
        step = 64 * 1024
        chunks = [body[i : i + step] for i in range(0, len(body), step)]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        writer.write(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + payload)
    else:
        writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    try:
        await writer.drain()
        status_line = await reader.readline()
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        answer = await reader.readexactly(int(headers["content-length"]))
    finally:
        writer.close()
        await writer.wait_closed()
    return int(status_line.split()[1]), json.loads(answer)


def _assert_413(status: int, body: Any) -> None:
    assert status == 413, body
    assert body["error"]["code"] == "payload_too_large", body
    assert body["error"]["details"]["limit_bytes"] == MIB, body


@pytest.mark.parametrize("size", [MIB + 1, 2 * MIB + 1, 8 * MIB])
async def test_rest_bodies_over_one_mib_are_refused_with_413_and_change_nothing(
    cp: ControlPlaneUnderTest, size: int
) -> None:
    body = _policy_of(size)
    assert len(body) == size
    targets = [
        ("POST", "/v1/policies"),
        ("POST", "/v1/policies/preview"),
        ("PATCH", "/v1/sessions/s-1/labels"),
        ("POST", "/v1/policies/big/rollback"),
    ]
    for method, path in targets:
        _assert_413(*await _raw(cp, method, path, body, chunked=False))
        # without Content-Length (chunked): refused while streaming, at the limit
        _assert_413(*await _raw(cp, method, path, body, chunked=True))
    assert (await cp.call("GET", "/v1/policies", expect=200))["items"] == []
    await cp.call("GET", "/healthz", token=None, expect=200)


async def test_a_body_at_the_limit_is_read(cp: ControlPlaneUnderTest) -> None:
    body = _policy_of(MIB)
    headers = {**AUTH, "Content-Type": "application/json"}
    async with cp.http.post(
        cp.base + "/v1/policies", data=io.BytesIO(body), headers=headers
    ) as resp:
        assert resp.status == 422, await resp.text()  # parsed: the description is over 2000
        assert (await resp.json())["error"]["code"] == "invalid_policy"


async def test_control_frames_over_256_kib_close_the_channel_with_1009(
    cp: ControlPlaneUnderTest,
) -> None:
    url = cp.ws_base + "/v1/control"
    big = json.dumps({**REGISTER, "labels": {"pad": "x" * CONTROL_MAX}})
    async with cp.http.ws_connect(url, headers=AUTH) as ws:  # as the first frame
        await ws.send_str(big)
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1009, (msg, ws.close_code)
    assert not cp.service.engine.live

    async with cp.http.ws_connect(url, headers=AUTH) as ws:  # after registration
        await ws.send_json(REGISTER)
        registered = json.loads((await ws.receive(timeout=5)).data)
        assert registered["type"] == "registered"
        assert registered["session_id"] in cp.service.engine.live
        await ws.send_str(json.dumps({"type": "update", "config": {"prompt": "y" * CONTROL_MAX}}))
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1009, (msg, ws.close_code)
    await eventually(lambda: not cp.service.engine.live)
    log = await cp.log(registered["session_id"])
    assert [e["cause"] for e in log] == ["connect"], "the oversize update was never applied"

    async with cp.http.ws_connect(url, headers=AUTH) as ws:  # just under the limit: an error
        await ws.send_json(REGISTER)
        await ws.receive(timeout=5)
        await ws.send_str(json.dumps({"type": "update", "config": {"prompt": "z" * 200_000}}))
        answer = json.loads((await ws.receive(timeout=5)).data)
        assert answer["type"] == "update_result" and "prompt" in answer["rejected"], answer


async def _closed_with(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    async with asyncio.timeout(5):
        while True:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                return ws.close_code


async def test_gateway_client_frames_over_the_limit_close_with_1009(
    cp_factory: ControlPlaneFactory, emulator: Emulator
) -> None:
    limit = 64 * 1024
    async with cp_factory(max_client_message_bytes=limit) as cp:
        stream = cp.ws_base + "/v3/ws?sample_rate=16000&speech_model=universal-3-5-pro"
        for payload in (b"\x00" * (limit + 1), "p" * (limit + 1)):
            async with cp.http.ws_connect(stream, headers={"Authorization": "k"}) as ws:
                begin = json.loads((await ws.receive(timeout=5)).data)
                assert begin["type"] == "Begin"
                if isinstance(payload, bytes):
                    await ws.send_bytes(payload)
                else:
                    await ws.send_str(payload)
                assert await _closed_with(ws) == 1009

            async def upstream_closed(upstream_id: str = begin["id"]) -> bool:
                return (await emulator.session(upstream_id))["state"] == "closed"

            await eventually(upstream_closed)
        async with cp.http.ws_connect(
            cp.ws_base + "/v1/ws", headers={"Authorization": "Bearer k"}
        ) as ws:
            await ws.send_str(
                json.dumps(
                    {"type": "session.update", "session": {"system_prompt": "s" * (limit + 1)}}
                )
            )
            assert await _closed_with(ws) == 1009
        await eventually(lambda: not cp.service.engine.live)
        async with cp.http.ws_connect(stream, headers={"Authorization": "k"}) as ws:
            assert json.loads((await ws.receive(timeout=5)).data)["type"] == "Begin"
        await cp.call("GET", "/healthz", token=None, expect=200)
