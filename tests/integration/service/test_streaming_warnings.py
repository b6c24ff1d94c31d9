"""Streaming v3 ``Warning``s through the gateway (docs/audit.md, "Streaming v3 warnings"): the
protocol has no acknowledgement and no correlation, so when the upstream refuses an update
with a ``Warning`` the record cannot know which update it was. It must not stay silently
wrong: a ``Warning`` the upstream's config model did not predict is logged as an ``upstream``
``unverified`` entry naming it (``config-at`` carries it as a note), never an ``acked``; a
``Warning`` the model predicts (a U3-only field stripped on another model) is already in the
record's effect and adds nothing. Real sockets, the emulator's faults."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import websockets

from tests.integration.differential.actors import GatewayStreaming
from tests.integration.service.conftest import ControlPlaneUnderTest, Emulator, eventually


async def _upstream_entries(cp: ControlPlaneUnderTest, sid: str) -> list[dict[str, Any]]:
    return [e for e in await cp.log(sid) if e["cause"] == "upstream"]


async def test_a_warning_refusing_our_push_is_recorded_as_a_doubt(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    stream = GatewayStreaming("s0", "streaming-v3", "universal-3-5-pro", "gateway")
    try:
        await stream.open(cp.ws_base, "tier=gold")
        sid = stream.session_id = cp.live_by_upstream(stream.upstream_id)
        refuse = {"reject_next_update": {"style": "warning", "message": "not now"}}
        await emulator.faults(stream.upstream_id, refuse)
        await cp.publish({"id": "terms", "match": {"kind": ["streaming-v3"]},
                          "set": {"keyterms": ["acme"]}})  # fmt: skip
        [doubt] = await eventually(lambda: _upstream_entries(cp, sid))
        assert doubt["status"] == "unverified" and "not now" in doubt["error"], doubt
        assert "may not have been applied" in doubt["error"]
        truth = (await emulator.session(stream.upstream_id))["config"]
        assert not truth.get("keyterms_prompt")  # the upstream dropped our push
        answer = await cp.call("GET", f"/v1/sessions/{sid}/config-at?at={time.time()!r}",
                               expect=200)  # fmt: skip
        assert answer["rebuild"]["verified"] is True, answer
        assert any("in doubt" in note for note in answer["notes"]), answer["notes"]
        log = await cp.log(sid)
        assert not [e for e in log if e["status"] == "acked"]  # never acknowledged
    finally:
        await stream.close()


async def test_a_warning_the_model_predicts_adds_no_doubt(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """``prompt`` on Universal-Streaming is stripped by the upstream with a ``Warning``: the
    model strips it too (the record's delta never carried it), so nothing is in doubt."""
    stream = GatewayStreaming("s2", "streaming-v3", "universal-streaming-english", "gateway")
    try:
        await stream.open(cp.ws_base, "tier=gold")
        sid = stream.session_id = cp.live_by_upstream(stream.upstream_id)
        await stream.update({"prompt": "U3 only", "max_turn_silence": 2200})

        def warned() -> bool:
            return any(m.get("type") == "Warning" for m in stream.received)

        await eventually(warned)
        await eventually(lambda: _has_client_entry(cp, sid))
        assert await _upstream_entries(cp, sid) == []
    finally:
        await stream.close()


async def _has_client_entry(cp: ControlPlaneUnderTest, sid: str) -> bool:
    return any(e["cause"] == "client" for e in await cp.log(sid))


async def test_an_error_refusing_our_push_is_recorded_as_a_doubt_before_the_end(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """The upstream refuses an update with ``Error`` 3006 and closes: the record says the
    last updates may not have run (was: the push recorded ``sent``, config-at claiming it ran
    until the end; found by sdk-exp with the Python SDK)."""
    stream = GatewayStreaming("s0", "streaming-v3", "universal-3-5-pro", "gateway")
    try:
        await stream.open(cp.ws_base, "tier=gold")
        sid = stream.session_id = cp.live_by_upstream(stream.upstream_id)
        await emulator.faults(stream.upstream_id, {"reject_next_update": {"style": "error"}})
        await cp.publish({"id": "terms", "match": {"kind": ["streaming-v3"]},
                          "set": {"keyterms": ["acme"]}})  # fmt: skip

        async def ended() -> bool:
            return (await cp.session(sid))["state"] == "ended"

        await eventually(ended)
        [doubt] = await _upstream_entries(cp, sid)
        assert doubt["status"] == "unverified" and "Error 3006" in doubt["error"], doubt
    finally:
        await stream.close()


async def test_a_connect_the_upstream_refuses_is_recorded_rejected(
    cp: ControlPlaneUnderTest,
) -> None:
    """An ``Error`` before ``Begin`` (a speech_model the upstream does not know): no upstream
    session ever ran the connect's parameters, and the record says so (``connect`` v1
    ``rejected``, as a Voice Agent connect's ``session.error``); was: ``connect`` ``sent``
    alone, config-at claiming the parameters ran until the end (sdk-exp's finding)."""
    await cp.publish({"id": "terms", "match": {"kind": ["streaming-v3"]},
                      "set": {"keyterms": ["acme"]}})  # fmt: skip
    with pytest.raises(websockets.ConnectionClosedError):
        async with websockets.connect(
            cp.ws_base + "/v3/ws?sample_rate=16000&speech_model=bogus-model",
            additional_headers={"Authorization": "test-key"},
        ) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "Error"
            await asyncio.wait_for(ws.recv(), 5)

    async def ended() -> list[dict[str, Any]]:
        return list((await cp.call("GET", "/v1/sessions?state=ended", expect=200))["items"])

    [session] = await eventually(ended)
    log = await cp.log(session["id"])
    assert [(e["cause"], e["status"], e["version"]) for e in log] == [
        ("connect", "sent", 1), ("connect", "rejected", 1)]  # fmt: skip
    assert log[1]["error"].startswith("3006"), log[1]
    assert session["running_config"] is None  # no upstream session ran the parameters
    answer = await cp.call(
        "GET", f"/v1/sessions/{session['id']}/config-at?at={time.time()!r}", expect=200
    )
    assert "refused by the upstream" in answer["established_by"]["meaning"], answer
