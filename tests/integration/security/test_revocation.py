"""A token revoked while its long-lived connections are open ends them (docs/security.md): a
control-channel connection gets ``error`` ``token_revoked`` and close 1008 and its session
ends; a rollout stream ends with ``event: end`` ``{"reason": "token_revoked"}``. Connections
of other tokens go on. Without this, removing a leaked app token from the tokens file left
its sockets registered, pushed to and reporting for as long as they stayed open."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import aiohttp

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
