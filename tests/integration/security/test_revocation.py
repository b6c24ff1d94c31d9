"""A token revoked while its long-lived connections are open ends them (docs/security.md): a
control-channel connection gets ``error`` ``token_revoked`` and close 1008 and its session
ends; a rollout stream ends with ``event: end`` ``{"reason": "token_revoked"}``. Connections
of other tokens go on. Without this, removing a leaked app token from the tokens file left
its sockets registered, pushed to and reporting for as long as they stayed open."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path
from typing import Any

import aiohttp

from controlplane.edges.control_channel import TOKEN_RECHECK_S
from tests.integration.security.conftest import ControlPlaneFactory
from tests.integration.service.conftest import eventually

REGISTER = {"type": "register", "kind": "voice-agent-v1", "model": "voice-agent"}


async def _registered(ws: aiohttp.ClientWebSocketResponse) -> str:
    await ws.send_str(json.dumps(REGISTER))
    while True:
        frame = json.loads((await ws.receive(timeout=5)).data)
        if frame["type"] == "registered":
            return str(frame["session_id"])


async def test_revoking_a_token_ends_its_control_channel_and_rollout_stream(
    cp_factory: ControlPlaneFactory, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("app:tok-leaked-app\nviewer:tok-leaked-viewer\n")
    async with cp_factory(tokens_file=tokens) as cp:
        await cp.publish({"id": "tone", "set": {"system_prompt": "hi"}})
        url = cp.ws_base + "/v1/control"
        leaked = await cp.http.ws_connect(url, headers={"Authorization": "Bearer tok-leaked-app"})
        kept = await cp.http.ws_connect(url, headers={"Authorization": "Bearer tok-app"})
        leaked_sid, kept_sid = await _registered(leaked), await _registered(kept)
        stream = await cp.http.get(
            cp.base + "/v1/policies/tone/rollout/stream",
            headers={"Authorization": "Bearer tok-leaked-viewer"},
        )
        assert stream.status == 200
        assert (await stream.content.readline()).startswith(b"event: rollout")

        tokens.write_text("# both revoked\n")
        os.utime(tokens, ns=(7, 7))
        frames = []
        while True:  # the push of the connect, then the refusal and the close
            msg = await leaked.receive(timeout=10)
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            frames.append(json.loads(msg.data))
        assert frames[-1]["type"] == "error" and frames[-1]["code"] == "token_revoked"
        assert leaked.close_code == 1008

        async def ended() -> bool:
            return (await cp.session(leaked_sid))["state"] == "ended"

        await eventually(ended)
        body = await asyncio.wait_for(stream.content.read(), 10)
        assert b'event: end\ndata: {"reason":"token_revoked"}' in body
        stream.close()
        # the other token's connection is untouched
        assert not kept.closed and (await cp.session(kept_sid))["state"] != "ended"
        await kept.send_str(json.dumps({"type": "heartbeat"}))
        assert json.loads((await kept.receive(timeout=5)).data)["type"] in ("heartbeat", "push")
        await kept.close()
        await leaked.close()


def _small_receive_buffer(addr_info: Any) -> socket.socket:
    """A client socket that takes little before its app reads (SO_RCVBUF 4 KiB)."""
    family, kind, proto, _, _ = addr_info
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


async def test_an_app_that_does_not_read_holds_up_no_other_revocation(
    cp_factory: ControlPlaneFactory, tmp_path: Path
) -> None:
    """Two revoked tokens: the first one's app stopped reading and the server holds more of
    its frames than aiohttp's flow control lets a send add to (pushes of a 20,000-character
    prompt); the second's app reads. Each connection ends within a recheck and a few
    seconds: nothing in a revocation waits for an app to read (a guard: the concern was
    raised this session, checked, and holds today; a watcher that awaited the deaf app's
    drain or close answer would never end the second connection)."""
    tokens = tmp_path / "tokens"
    tokens.write_text("app:tok-deaf-app\napp:tok-other-app\n")
    async with cp_factory(tokens_file=tokens) as cp:
        url = cp.ws_base + "/v1/control"
        connector = aiohttp.TCPConnector(socket_factory=_small_receive_buffer)
        async with aiohttp.ClientSession(connector=connector) as deaf_http:
            deaf = await deaf_http.ws_connect(url, headers={"Authorization": "Bearer tok-deaf-app"})
            other = await cp.http.ws_connect(url, headers={"Authorization": "Bearer tok-other-app"})
            deaf_sid, other_sid = await _registered(deaf), await _registered(other)
            for n in range(30):  # the deaf app reads none of these
                prompt = f"{n:05d}" + "x" * 19_990
                await cp.publish({"id": "big", "set": {"system_prompt": prompt}})
            while True:  # the other app reads them all
                if '"00029xxx' in (await other.receive(timeout=10)).data:
                    break
            tokens.write_text("# both revoked\n")
            os.utime(tokens, ns=(7, 7))
            budget = TOKEN_RECHECK_S + 4  # a recheck, the store's re-read, a loaded machine
            frames = []
            while True:  # the deaf app is never read: only the other one
                msg = await other.receive(timeout=budget)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                frames.append(json.loads(msg.data))
            assert frames and frames[-1]["code"] == "token_revoked", frames[-3:]
            assert other.close_code == 1008

            async def both_ended() -> bool:
                states = [(await cp.session(sid))["state"] for sid in (deaf_sid, other_sid)]
                return states == ["ended", "ended"]

            await eventually(both_ended, timeout=budget)
            await deaf.close()
            await other.close()
