"""The id an app knows (``Begin.id``, Voice Agent ``session_id``) finds its session in REST,
the CLI and ``audit at``, live and after it ended."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import websockets
from assemblyai.streaming.v3 import (
    AsyncRealTimeTranscriber,
    BeginEvent,
    RealTimeEvents,
    RealTimeParameters,
    RealTimeTranscriberOptions,
)

from controlplane import cli
from tests.integration.service.conftest import ADMIN, ControlPlaneUnderTest, eventually


def run_cli(cp: ControlPlaneUnderTest, *args: str) -> int:
    return cli.main([*args[:2], "--url", cp.base, "--token", ADMIN, "--json", *args[2:]])


async def _cli_json(cp: ControlPlaneUnderTest, capsys: Any, *args: str) -> tuple[int, Any]:
    capsys.readouterr()
    code = await asyncio.to_thread(run_cli, cp, *args)
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


async def test_sdk_begin_id_finds_the_session_in_rest_cli_and_audit_at(
    cp: ControlPlaneUnderTest, capsys: Any
) -> None:
    await cp.publish({"id": "eu", "match": {"labels": {"region": "eu"}},
                      "set": {"keyterms": ["Acme"]}})  # fmt: skip
    client = AsyncRealTimeTranscriber(RealTimeTranscriberOptions(
        api_key="test-key", api_host=f"{cp.ws_base}/labels/region=eu"))  # fmt: skip
    begins: list[BeginEvent] = []
    client.on(RealTimeEvents.Begin, lambda _c, event: begins.append(event))
    await client.connect(RealTimeParameters(sample_rate=16000,
                                            speech_model="universal-3-5-pro"))  # fmt: skip
    try:
        await eventually(lambda: begins)
        upstream_id = begins[0].id
        cp_id = cp.live_by_upstream(upstream_id)
        assert upstream_id != cp_id

        by_upstream = await cp.session(upstream_id)
        assert by_upstream["id"] == cp_id and by_upstream["upstream_id"] == upstream_id
        assert by_upstream["labels"] == {"region": "eu"}
        listed = await cp.call("GET", f"/v1/sessions?upstream_id={upstream_id}", expect=200)
        assert [s["id"] for s in listed["items"]] == [cp_id]
        none = await cp.call("GET", "/v1/sessions?upstream_id=nope", expect=200)
        assert none["items"] == []
        assert await cp.log(upstream_id) == await cp.log(cp_id)

        code, shown = await _cli_json(cp, capsys, "sessions", "show", upstream_id)
        assert code == 0 and shown["id"] == cp_id
        code, logged = await _cli_json(cp, capsys, "sessions", "log", upstream_id)
        entries = logged["items"] if isinstance(logged, dict) else logged
        assert code == 0 and entries[0]["session_id"] == cp_id
        code, listed_cli = await _cli_json(cp, capsys, "sessions", "ls", "--upstream-id",
                                           upstream_id)  # fmt: skip
        rows = listed_cli["items"] if isinstance(listed_cli, dict) else listed_cli
        assert code == 0 and [r["id"] for r in rows] == [cp_id]
    finally:
        await client.disconnect(terminate=True)

    async def ended() -> bool:
        return (await cp.session(upstream_id))["state"] == "ended"

    await eventually(ended)  # still found by the upstream id once it ended
    at = repr(time.time())
    answer = await cp.call("GET", f"/v1/sessions/{upstream_id}/config-at?at={at}", expect=200)
    assert answer["session_id"] == cp_id
    assert answer["config"]["keyterms"] == ["Acme"]
    code, cli_answer = await _cli_json(cp, capsys, "audit", "at", upstream_id, at)
    assert code == 0 and cli_answer["session_id"] == cp_id
    assert cli_answer["config"] == answer["config"]
    await cp.call("GET", "/v1/sessions/unknown-id", expect=404)


async def test_voice_agent_session_id_finds_the_session(cp: ControlPlaneUnderTest) -> None:
    headers = {"Authorization": "Bearer test-key"}
    async with websockets.connect(cp.ws_base + "/v1/ws", additional_headers=headers) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": {}}))
        ready = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert ready["type"] == "session.ready"
        session = await cp.session(ready["session_id"])
        assert session["upstream_id"] == ready["session_id"]
        assert session["id"].startswith("cps_")
        relabelled = await cp.call("PATCH", f"/v1/sessions/{ready['session_id']}/labels",
                                   body={"labels": {"tier": "gold"}}, expect=200)  # fmt: skip
        assert relabelled["id"] == session["id"] and relabelled["labels"] == {"tier": "gold"}
